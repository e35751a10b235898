"""Entry point of the embedded catalog server: ``tiled serve config`` whose SQLite table
storage waits for a lock instead of failing at once.

tiled 0.2.20 keeps appendable tables (event rows, our frames and spots tables) in SQLite
through a pool of ADBC connections that have no busy timeout: a write that meets another
connection's write fails immediately with "database is locked" (HTTP 500). During a live
scan the raw TiledWriter and the processed-results writer append at the same time, so on a
slow disk most appends would fail and be retried. SQLite's ``busy_timeout`` makes a
connection wait for the lock instead; it is a per-connection setting, so it is applied to
every connection the pool opens. The wrapped property is checked at start-up: if a tiled
release renames it, the server says so and stops rather than running without the fix.

tiled's start-up banner would print a key in ``server.log`` (not even the served one: tiled
0.2.20 prints a random key of its default settings there); it is printed without one.

With ``--parent-pid PID`` first, the server stops when process PID (the one that started
it) ends, however it ends: a watcher thread sees our parent change (we are re-parented to
init or a subreaper) and sends us SIGTERM, which uvicorn answers with a clean shutdown; if
that hangs, the process exits anyway. (Linux's ``PR_SET_PDEATHSIG`` is not used: it fires
when the parent *thread* that started us ends, and a catalog is restarted from short-lived
threads, e.g. a timer during an outage test.)

Run as ``python -m labdct_live.catalog._tiled_server --parent-pid PID serve config CONFIG.yml``
(what :class:`labdct_live.catalog.server.CatalogServer` does).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time

#: How long (ms) a table write waits for another writer's lock before failing.
BUSY_TIMEOUT_MS = 60_000
#: How often (s) the watcher checks that the parent lives, and how long (s) a clean shutdown
#: may take once it is gone.
PARENT_POLL_S, SHUTDOWN_GRACE_S = 0.5, 5.0


def _exit_with_parent(parent_pid: int) -> None:
    """Stop this process when ``parent_pid`` is no longer its parent (a daemon thread)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        print(f"labdct-live: process {parent_pid}, which started this catalog server, is "
              "gone; stopping", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(SHUTDOWN_GRACE_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _no_key_in_banner() -> None:
    import tiled.server.app

    print_server_info = tiled.server.app.print_server_info

    @functools.wraps(print_server_info)
    def without_key(*args, include_api_key: bool = False, **kwargs) -> None:
        print_server_info(*args, include_api_key=False, **kwargs)

    tiled.server.app.print_server_info = without_key


def _wait_for_sqlite_locks() -> None:
    import sqlalchemy.event
    from tiled.storage import SQLStorage

    original = SQLStorage.__dict__.get("_connection_pool")
    if not isinstance(original, functools.cached_property):
        raise RuntimeError("tiled.storage.SQLStorage._connection_pool is gone: this tiled "
                           "release is not supported by labdct-live's embedded catalog")

    def connection_pool(self):
        pool = original.func(self)
        if self.uri.startswith("sqlite:"):
            def set_busy_timeout(connection, _record) -> None:
                cursor = connection.cursor()
                cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                cursor.close()
                connection.commit()

            sqlalchemy.event.listen(pool, "connect", set_busy_timeout)
        return pool

    patched = functools.cached_property(connection_pool)
    patched.__set_name__(SQLStorage, "_connection_pool")
    SQLStorage._connection_pool = patched


def _init_catalog_in_process() -> None:
    """Create a new catalog's tables in this process, not in a ``tiled catalog init``
    subprocess (which tiled starts on every start-up, new catalog or not: a second Python
    that imports tiled, ~3 s of CPU). Before the server runs there is no other thread to
    upset SQLite; inside a running event loop tiled's own subprocess path is kept."""
    import asyncio

    import tiled.catalog
    from tiled.commandline._catalog import init

    original = tiled.catalog.from_uri

    @functools.wraps(original)
    def from_uri(uri, *args, init_if_not_exists=False, **kwargs):
        if init_if_not_exists:
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # no loop: initialise here
                init(database=uri, if_not_exists=True)
                init_if_not_exists = False
        return original(uri, *args, init_if_not_exists=init_if_not_exists, **kwargs)

    tiled.catalog.from_uri = from_uri


def main(argv: list[str] | None = None) -> int:
    """Run ``tiled`` with ``argv`` (default ``sys.argv[1:]``), patched as described above.

    A leading ``--parent-pid PID`` is ours: the server stops when that process ends.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["--parent-pid"]:
        _exit_with_parent(int(args[1]))  # first: the imports below take seconds
        args = args[2:]
    from tiled.commandline.main import main as tiled_main

    _wait_for_sqlite_locks()
    _no_key_in_banner()
    _init_catalog_in_process()
    sys.argv = ["tiled", *args]
    return tiled_main()


if __name__ == "__main__":
    sys.exit(main())
