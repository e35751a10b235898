"""The raw run to tiled, off the RunEngine's thread, surviving a catalog outage.

A callback subscribed to the RunEngine runs in its thread, and an exception aborts the run.
:class:`ResilientTiledWriter` puts documents on a queue instead (never blocking, never
raising) and hands them, in order, to bluesky-tiled-plugins' ``TiledWriter`` from a worker
thread.

Retrying a failed document into the same ``TiledWriter`` is not safe: a request cut off by a
dying server may have been applied or not, and ``TiledWriter`` keeps state about what it
wrote (a retried row append can duplicate rows). So the writer keeps the current run's
documents; when a delivery fails because the server cannot be reached, it waits for the
server, deletes the partly written run node and writes the whole run again, from its start
document, through a fresh ``TiledWriter``. The run arrives whole once the server is back.
Any other failure is logged and counted, and the next document goes on.

A server that stays away longer than ``outage_limit`` seconds is given up on for the current
run: its documents (so far and to come) go to a document file in ``spool_dir``
(:func:`labdct_live.io.wire.append_document`), which ``labdct-live import-spool`` writes to the
catalog once it is back. Nothing waits without bound.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

import httpx

from labdct_live.catalog.errors import is_transient_error
from labdct_live.io.names import safe_key
from labdct_live.io.wire import append_document

__all__ = ["ResilientTiledWriter"]

logger = logging.getLogger(__name__)

class ResilientTiledWriter:
    """``TiledWriter`` behind a queue, rewriting a run after an outage (module docstring).

    Parameters
    ----------
    client : tiled client root
    retry_interval : float
        Seconds between checks while the server is unreachable.
    outage_limit : float
        Seconds to wait for a server that is away before the run goes to ``spool_dir``.
    spool_dir : path-like, optional
        Where the documents of a run given up on are kept (``raw-<uid>.docs``); without it,
        they are logged as lost (the detector's files remain).
    **writer_options
        Passed to ``TiledWriter`` (e.g. ``batch_size=1`` to register frames as they come).
    """

    def __init__(self, client, retry_interval: float = 1.0, outage_limit: float = 300.0,
                 spool_dir=None, **writer_options):
        self.client = client
        self.retry_interval = retry_interval
        self.outage_limit = outage_limit
        self.spool_dir = Path(spool_dir) if spool_dir is not None else None
        self.writer_options = writer_options
        self.delivered = 0
        self.rewrites = 0  #: runs written again after an outage
        self.spooled_runs: list[str] = []  #: runs given up on, whose documents are on disk
        self._spool_file: Path | None = None  # the current run's, once given up on
        self._given_up = False
        self.failed: list[tuple[str, str]] = []
        self._writer = self._new_writer()
        self._run_docs: list[tuple[str, dict]] = []
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="resilient-tiled-writer",
                                        daemon=True)
        self._thread.start()

    def _new_writer(self):
        from bluesky_tiled_plugins import TiledWriter

        return TiledWriter(self.client, **self.writer_options)

    def __call__(self, name: str, doc: dict) -> None:
        self._queue.put((name, doc))

    # ------------------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            name, doc = self._queue.get()
            try:
                if name == "start":
                    if self._given_up:  # its state is that of a run cut short
                        self._writer = self._new_writer()
                    self._run_docs, self._given_up, self._spool_file = [], False, None
                self._run_docs.append((name, doc))
                if self._given_up:
                    self._keep(name, doc)
                else:
                    self._deliver(name, doc)
                if name == "stop":
                    self._run_docs = []
            except Exception as exc:  # noqa: BLE001 - never let the worker die
                self.failed.append((name, repr(exc)))
                logger.exception("TiledWriter could not take a %s document", name)
            finally:
                self._queue.task_done()

    def _deliver(self, name: str, doc: dict) -> None:
        try:
            self._writer(name, doc)
            self.delivered += 1
        except Exception as exc:
            if not is_transient_error(exc):
                raise
            logger.warning("tiled unreachable while writing the raw run (%s); will rewrite "
                           "the run when the server is back", exc)
            self._rewrite_run()

    def _rewrite_run(self, attempts: int = 10) -> None:
        """Wait for the server, drop the partial run, write the run's documents again.

        A server that has just come back may still fail a request or two (HTTP 500 while it
        settles): every error is retried here, ``attempts`` times, before giving up.
        """
        uid = self._run_docs[0][1]["uid"] if self._run_docs else None
        for attempt in range(1, attempts + 1):
            if not self._wait_for_server():
                self._give_up(uid)
                return
            try:
                if uid is not None and uid in self.client:
                    self.client.delete_contents(uid, recursive=True, external_only=False)
                self._writer = self._new_writer()
                for name, doc in self._run_docs:
                    self._writer(name, doc)
                self.rewrites += 1
                self.delivered += 1
                logger.warning("raw run %s written again after the outage", uid)
                return
            except Exception as exc:  # noqa: BLE001 - retried, then re-raised
                if attempt == attempts:
                    raise
                logger.info("rewriting run %s failed (%s); retrying", uid, exc)
                time.sleep(self.retry_interval)

    def _wait_for_server(self) -> bool:
        """True once the server answers; False after :attr:`outage_limit` seconds."""
        base = str(self.client.context.api_uri).rstrip("/").removesuffix("/api/v1")
        deadline = time.monotonic() + self.outage_limit
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=2.0).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(self.retry_interval)
        return False

    def _give_up(self, uid: str | None) -> None:
        """The server stayed away: keep this run's documents on disk from now on."""
        self._given_up = True
        if self.spool_dir is None:
            logger.error("the catalog stayed away for %.0f s: raw run %s is not in the catalog "
                         "and its documents are lost (no spool folder)", self.outage_limit, uid)
            return
        self._spool_file = self.spool_dir / f"raw-{safe_key(str(uid), 'run uid')}.docs"
        self._spool_file.unlink(missing_ok=True)  # a run given up on twice: keep one copy
        for name, doc in self._run_docs:
            self._keep(name, doc)
        self.spooled_runs.append(str(uid))
        logger.error("the catalog stayed away for %.0f s: raw run %s goes to %s; "
                     "`labdct-live import-spool` writes it to the catalog later",
                     self.outage_limit, uid, self._spool_file)

    def _keep(self, name: str, doc: dict) -> None:
        if self._spool_file is None:
            return
        self._spool_file.parent.mkdir(parents=True, exist_ok=True)
        append_document(self._spool_file, name, doc)

    # --------------------------------------------------------------------------- API
    @property
    def backlog(self) -> int:
        """Documents waiting to be written."""
        return self._queue.qsize()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every document queued so far was handled; True when it was."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True
