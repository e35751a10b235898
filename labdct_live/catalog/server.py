"""The tiled catalog: an embedded server we start and stop, or any tiled server by URI.

The embedded default is a local SQLite + files catalog served by a ``tiled serve config``
subprocess bound to localhost with the folder's own API key (kept across restarts). It is a
real tiled server: a second process (the 0MQ worker, a notebook) reaches it by URI and key,
and tests stop and restart it to prove that nothing is lost while it is away. SQLite allows
one writer, so exactly one server owns a catalog directory (a lock enforces it); every other
process is its client. A server stops with the command that started it, even a killed one
(:func:`stop_on_signals`, :mod:`labdct_live.catalog._tiled_server`). At scale the same code
points at a tiled server backed by PostgreSQL (:func:`connect` with its URI and API key).

The server registers bluesky-tiled-plugins' json-seq exporter for BlueskyRun nodes, so that
``run.documents()`` can replay a stored run.

Tabular data (event rows, our frames and spots tables) is stored in SQLite
(``tables.sqlite``), not DuckDB: with tiled 0.2.20, concurrent appends from the raw writer and
the processed writer crashed the server's DuckDB storage ("No active transaction, cannot
commit"). tiled's SQLite connections would answer a conflicting write with "database is
locked" (HTTP 500) at once; the server therefore runs through
:mod:`labdct_live.catalog._tiled_server`, which makes them wait for the lock. Both writers still
retry what fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from labdct_live.catalog.client import connect
from labdct_live.catalog.errors import CatalogUnavailable

__all__ = [
    "CatalogServer",
    "Terminated",
    "stop_on_signals",
    "tiled_config_yaml",
]

logger = logging.getLogger(__name__)


class _PortTaken(Exception):
    """The server could not bind its port."""


class Terminated(SystemExit):
    """Raised in the main thread by :func:`stop_on_signals` when the process gets a signal.

    A :class:`SystemExit` with status ``128 + signal number`` (what a shell reports for a
    process ended by that signal), so ``finally`` blocks and context managers run.
    """


#: How long (s) a server stopped while starting may take before it is killed.
STARTING_GRACE_S = 3.0

#: Files of a catalog folder that hold the API key or describe the running server.
API_KEY_FILE, LOCK_FILE, SERVER_FILE = "api_key", "server.lock", "server.json"


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)
                    ) -> Iterator[None]:
    """Turn ``signals`` into :class:`Terminated` in the main thread for the block.

    By default SIGTERM (``kill``, systemd, a batch system) ends Python at once, skipping the
    ``finally`` blocks that stop an embedded catalog server and flush the writers; inside
    this block it unwinds the stack like Ctrl-C does. A repeated signal is ignored so that
    the clean-up finishes (SIGKILL still ends the process, and the server follows, see
    :mod:`labdct_live.catalog._tiled_server`). A signal that is ignored (``nohup``) or handled by
    someone else keeps its handler. Outside the main thread, where handlers cannot be set,
    the block runs unchanged.

    Parameters
    ----------
    signals : tuple of int
        Signals to catch (SIGTERM and SIGHUP by default).

    Examples
    --------
    >>> with stop_on_signals(), CatalogServer("catalog") as server:   # doctest: +SKIP
    ...     serve_forever(server)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def terminate(signum: int, _frame) -> None:
        if not received:
            received.append(signum)
            raise Terminated(128 + signum)

    previous = {s: signal.signal(s, terminate) for s in signals
                if signal.getsignal(s) is signal.SIG_DFL}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _free_port(host: str = "127.0.0.1") -> int:
    """A TCP port of ``host`` that is free now (another process may take it before we do)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in a file only its owner can read (mode 0600).

    Written beside and renamed, so that neither an older, more open file's mode nor a reader
    catching it half-written is ever seen.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _persistent_api_key(path: Path) -> str:
    """The API key stored in ``path``, made (random, mode 0600) when there is none.

    Clients keep the key across server restarts, so a scan running against the catalog
    survives ``labdct-live serve`` being restarted. A key file other users may read or write
    is refused rather than fixed: its key may already be known to them.

    Raises
    ------
    CatalogUnavailable
        The file is open to other users, or holds no usable key.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        key = secrets.token_hex(16)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return key
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd) as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode) or mode & 0o077:
            raise CatalogUnavailable(
                f"the catalog's API key file {path} is open to other users (mode "
                f"{stat.S_IMODE(mode):o}); refusing to use a key others may have read: run "
                f"`chmod 600 {path}` if only you could have read it, else delete it for a "
                "new key")
        key = f.read().strip()
    if not key.isalnum():  # it goes into the YAML config and into URLs as ?api_key=
        raise CatalogUnavailable(f"the catalog's API key file {path} holds no usable key "
                                 "(letters and digits); delete it for a new key")
    return key


def _lock_directory(directory: Path) -> int:
    """An open file descriptor holding the exclusive lock of catalog folder ``directory``.

    Raises
    ------
    CatalogUnavailable
        Another process holds the lock: a server runs on the folder (named from its
        ``server.json``).
    """
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        try:
            info = json.loads((directory / SERVER_FILE).read_text())
            running = f" (pid {info['pid']}, {info['uri']})"
        except (OSError, ValueError, KeyError, TypeError):  # starting, or stopping
            running = ""
        raise CatalogUnavailable(
            f"a catalog server already runs on {directory}{running}: SQLite allows one "
            "writer, so a catalog folder has one server; connect to it, or stop it "
            "first") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def tiled_config_yaml(directory: Path, readable: list[Path], api_key: str, host: str,
                      port: int, catalog_uri: str | None = None,
                      table_uri: str | None = None) -> str:
    """A ``tiled serve config`` file: files in ``directory/data``, the catalog and the tables
    in SQLite files of ``directory`` unless database URIs are given (e.g. PostgreSQL).

    The file holds ``api_key``: write it readable by its owner only.
    """
    catalog_uri = catalog_uri or f"sqlite:///{directory / 'catalog.db'}"
    table_uri = table_uri or f"sqlite:///{directory / 'tables.sqlite'}"
    readable_list = "".join(f"\n        - {p}" for p in readable) or " []"
    return f"""\
authentication:
  single_user_api_key: "{api_key}"
trees:
  - path: /
    tree: catalog
    args:
      uri: "{catalog_uri}"
      init_if_not_exists: true
      writable_storage:
        - "{directory / 'data'}"
        - "{table_uri}"
      readable_storage:{readable_list}
media_types:
  BlueskyRun:
    application/json-seq: bluesky_tiled_plugins.exporters:json_seq_exporter
uvicorn:
  host: "{host}"
  port: {port}
"""


class CatalogServer:
    """An embedded tiled catalog served by a ``tiled serve config`` subprocess.

    One server per catalog folder: the server process holds an exclusive lock on
    ``server.lock`` for as long as it runs (it keeps the SQLite files open, so the lock
    follows it, not the process that started it), and ``server.json`` (pid, URI) names it
    to a second :meth:`start`, which fails. The server stops with the process that started
    it, even when that process is killed (see :mod:`labdct_live.catalog._tiled_server`).

    Parameters
    ----------
    directory : path-like
        Where the catalog lives (``catalog.db``, ``data/``, ``tables.sqlite``, the API key,
        the server's config, lock and log). Reused when it exists.
    readable_storage : list of path-like
        Directories whose files (e.g. detector HDF5 files) the catalog may register.
    api_key : str, optional
        When None, the folder's own key: ``directory/api_key`` (mode 0600), made on the
        first start and kept, so clients outlive a restart; :attr:`api_key` is None until
        then.
    host, port : str, int
        Bind address; localhost and a free port by default.

    Examples
    --------
    >>> with CatalogServer("catalog") as server:   # doctest: +SKIP
    ...     client = server.client()
    """

    def __init__(self, directory: str | os.PathLike, readable_storage=(),
                 api_key: str | None = None, host: str = "127.0.0.1", port: int | None = None):
        self.directory = Path(directory).resolve()
        self.readable_storage = [Path(p).resolve() for p in readable_storage]
        self.api_key = api_key
        self._key_given = api_key is not None
        self.host = host
        self._port_given = port is not None
        self._served = False
        self.port = port or _free_port(host)
        self._process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs (or has not been reaped), else None."""
        return None if self._process is None else self._process.pid

    def start(self, timeout: float = 120.0) -> CatalogServer:
        """Start the server and wait until it answers.

        A port we chose ourselves can be taken by another process between choosing and
        binding; on the first start the server then moves to a new port (twice at most). A
        restart keeps its port: clients know the server by it.

        Raises
        ------
        CatalogUnavailable
            Another server runs on the folder, the key file is refused, the port is taken,
            or the server exited or did not answer within ``timeout`` seconds.
        """
        for attempt in range(3):
            try:
                return self._start(timeout)
            except _PortTaken:
                if self._port_given or self._served or attempt == 2:
                    raise CatalogUnavailable(f"port {self.port} is in use; see "
                                             f"{self.directory / 'server.log'}") from None
                self.port = _free_port(self.host)
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> CatalogServer:
        if self.running:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = _lock_directory(self.directory)
        try:
            try:
                log_start = self._spawn(lock)
            finally:
                # From here the lock is the server process's alone: it is released when
                # that process ends, however it ends, and retaken by our next start.
                os.close(lock)
            self._wait_until_serving(log_start, timeout)
        except BaseException:  # an error, Ctrl-C or SIGTERM while starting: no orphan
            # A server that never answered has nothing to flush; one caught mid-import may
            # not see SIGINT for long on a loaded machine, so it gets a short grace only.
            self.stop(timeout=STARTING_GRACE_S)
            raise
        return self

    def _spawn(self, lock: int) -> int:
        """Write the key, config and ``server.json``; start the server holding ``lock``.

        Returns the offset of this start's output in ``server.log``.
        """
        if not self._key_given:
            self.api_key = _persistent_api_key(self.directory / API_KEY_FILE)
        (self.directory / "data").mkdir(exist_ok=True)
        for p in self.readable_storage:
            p.mkdir(parents=True, exist_ok=True)
        config = self.directory / "tiled-config.yml"
        _write_private(config, tiled_config_yaml(self.directory, self.readable_storage,
                                                 self.api_key, self.host, self.port))
        log = os.open(self.directory / "server.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                      0o600)
        try:
            os.fchmod(log, 0o600)  # a log made by an older version may be open to all
            log_start = os.lseek(log, 0, os.SEEK_END)
            # A new session: Ctrl-C in the terminal reaches only us, and we stop the server
            # after our writers are done. --parent-pid makes it stop if we die first.
            self._process = subprocess.Popen(
                [sys.executable, "-m", "labdct_live.catalog._tiled_server", "--parent-pid",
                 str(os.getpid()), "serve", "config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                pass_fds=(lock,))
        finally:
            os.close(log)
        _write_private(self.directory / SERVER_FILE,
                       json.dumps({"pid": self._process.pid, "uri": self.uri}) + "\n")
        return log_start

    def _wait_until_serving(self, log_start: int, timeout: float) -> None:
        log_path = self.directory / "server.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            returncode = self._process.poll()
            if returncode is not None:
                with open(log_path, "rb") as f:
                    f.seek(log_start)
                    if b"address already in use" in f.read():
                        raise _PortTaken
                raise CatalogUnavailable(
                    f"the tiled server exited with code {returncode}; see {log_path}")
            try:
                if httpx.get(f"{self.uri}/healthz", timeout=1.0).status_code == 200:
                    logger.info("tiled catalog %s serving %s", self.uri, self.directory)
                    self._served = True
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise CatalogUnavailable(f"the tiled server did not answer within {timeout} s; see "
                                 f"{log_path}")

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server (SIGINT, then SIGKILL after ``timeout``); its lock goes with it."""
        if self._process is None:
            return
        if self._process.poll() is None:
            try:
                os.killpg(self._process.pid, signal.SIGINT)
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
            except ProcessLookupError:  # it ended between poll and kill
                self._process.wait()
        self._forget(self._process.pid)
        self._process = None

    def _forget(self, pid: int) -> None:
        """Remove ``server.json`` if it still names ``pid``: once the server has ended, the
        folder is free and the file may already describe a newer server."""
        path = self.directory / SERVER_FILE
        try:
            if json.loads(path.read_text()).get("pid") == pid:
                path.unlink()
        except (OSError, ValueError, AttributeError):
            pass

    def restart(self) -> CatalogServer:
        """Stop and start again on the same port with the same key."""
        self.stop()
        return self.start()

    def client(self):
        """A :mod:`tiled.client` root of this catalog."""
        return connect(self.uri, self.api_key)

    def __enter__(self) -> CatalogServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
