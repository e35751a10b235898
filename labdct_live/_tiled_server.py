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

Run as ``python -m labdct_live._tiled_server serve config CONFIG.yml`` (what
:class:`labdct_live.catalog.CatalogServer` does).
"""

from __future__ import annotations

import functools
import sys

#: How long (ms) a table write waits for another writer's lock before failing.
BUSY_TIMEOUT_MS = 60_000


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


def main(argv: list[str] | None = None) -> int:
    from tiled.commandline.main import main as tiled_main

    _wait_for_sqlite_locks()
    sys.argv = ["tiled", *(sys.argv[1:] if argv is None else argv)]
    return tiled_main()


if __name__ == "__main__":
    sys.exit(main())
