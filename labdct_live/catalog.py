"""The tiled catalog: an embedded server we start and stop, or any tiled server by URI.

The embedded default is a local SQLite + files catalog served by a ``tiled serve config``
subprocess bound to localhost with a random API key. It is a real tiled server: a second
process (the 0MQ worker, a notebook) reaches it by URI and key, and tests stop and restart it
to prove that nothing is lost while it is away. SQLite allows one writer, so exactly one
server owns a catalog directory; every other process is its client. At scale the same code
points at a tiled server backed by PostgreSQL (:func:`connect` with its URI and API key).

The server registers bluesky-tiled-plugins' json-seq exporter for BlueskyRun nodes, so that
``run.documents()`` can replay a stored run.

Tabular data (event rows, our frames and spots tables) is stored in SQLite
(``tables.sqlite``), not DuckDB: with tiled 0.2.20, concurrent appends from the raw writer and
the processed writer crashed the server's DuckDB storage ("No active transaction, cannot
commit"). tiled's SQLite connections would answer a conflicting write with "database is
locked" (HTTP 500) at once; the server therefore runs through
:mod:`labdct_live._tiled_server`, which makes them wait for the lock. Both writers still
retry what fails.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

__all__ = ["CatalogServer", "connect", "CatalogUnavailable"]

logger = logging.getLogger(__name__)


class CatalogUnavailable(RuntimeError):
    """The catalog server could not be started or reached."""


class _PortTaken(Exception):
    """The server could not bind its port."""


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tiled_config_yaml(directory: Path, readable: list[Path], api_key: str, host: str,
                      port: int, catalog_uri: str | None = None,
                      table_uri: str | None = None) -> str:
    """A ``tiled serve config`` file: files in ``directory/data``, the catalog and the tables
    in SQLite files of ``directory`` unless database URIs are given (e.g. PostgreSQL)."""
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

    Parameters
    ----------
    directory : path-like
        Where the catalog lives (``catalog.db``, ``data/``, ``tables.sqlite``, the server's
        config and log). Reused when it exists.
    readable_storage : list of path-like
        Directories whose files (e.g. detector HDF5 files) the catalog may register.
    api_key : str, optional
        A random key when None.
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
        self.api_key = api_key or secrets.token_hex(16)
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

    def start(self, timeout: float = 120.0) -> "CatalogServer":
        """Start the server and wait until it answers.

        A port we chose ourselves can be taken by another process between choosing and
        binding; on the first start the server then moves to a new port (twice at most). A
        restart keeps its port: clients know the server by it.
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

    def _start(self, timeout: float) -> "CatalogServer":
        if self.running:
            return self
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        for p in self.readable_storage:
            p.mkdir(parents=True, exist_ok=True)
        config = self.directory / "tiled-config.yml"
        config.write_text(tiled_config_yaml(self.directory, self.readable_storage, self.api_key,
                                       self.host, self.port))
        log_path = self.directory / "server.log"
        log = open(log_path, "ab")
        log_start = log.tell()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "labdct_live._tiled_server", "serve", "config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            returncode = self._process.poll()
            if returncode is not None:
                self._process = None
                with open(log_path, "rb") as f:
                    f.seek(log_start)
                    if b"address already in use" in f.read():
                        raise _PortTaken
                raise CatalogUnavailable(
                    f"the tiled server exited with code {returncode}; see "
                    f"{self.directory / 'server.log'}")
            try:
                if httpx.get(f"{self.uri}/healthz", timeout=1.0).status_code == 200:
                    logger.info("tiled catalog %s serving %s", self.uri, self.directory)
                    self._served = True
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise CatalogUnavailable(f"the tiled server did not answer within {timeout} s; see "
                                 f"{self.directory / 'server.log'}")

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server (SIGINT, then SIGKILL after ``timeout``)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGINT)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        self._process = None

    def restart(self) -> "CatalogServer":
        self.stop()
        return self.start()

    def client(self):
        """A :mod:`tiled.client` root of this catalog."""
        return connect(self.uri, self.api_key)

    def __enter__(self) -> "CatalogServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def connect(uri: str, api_key: str | None = None):
    """A tiled client root for ``uri`` (``http://host:port``), with ``api_key``.

    The key defaults to the ``TILED_API_KEY`` environment variable.
    """
    from tiled.client import from_uri

    api_key = api_key or os.environ.get("TILED_API_KEY")
    try:
        return from_uri(uri, api_key=api_key)
    except Exception as exc:  # httpx errors, auth errors: say which catalog failed
        raise CatalogUnavailable(f"cannot open the tiled catalog at {uri}: {exc}") from exc
