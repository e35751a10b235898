"""Documents to the live processor of their run, guarded, and joining runs in mid-flight.

:class:`LiveRouter` does for the live processors what :class:`event_model.RunRouter` does for
callbacks in general, with two differences that matter live:

- **It never raises.** A document it cannot route (an unknown descriptor, a start document
  seen twice, a malformed document from the wire) is logged and counted in
  :attr:`LiveRouter.rejected`; ``RunRouter`` raises, which would stop a RunEngine or a 0MQ
  worker.
- **A worker that starts in the middle of a run joins it.** The first document of a run it
  has not seen (a descriptor, an event, a stream datum) makes it read the run's start
  document and descriptors back from the raw run in the catalog. Frames that went by before
  it joined are read from the raw run at the stop document (the processor's backfill).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from event_model import DocumentRouter

__all__ = ["LiveRouter"]

logger = logging.getLogger(__name__)


class LiveRouter(DocumentRouter):
    """Makes a processor per run and routes each document to its run's processor.

    Parameters
    ----------
    make_processor : callable
        ``make_processor() -> DocumentRouter``, one per run (a
        :class:`~labdct_live.callbacks.live.LiveProcessor`, see
        :func:`~labdct_live.callbacks.live.live_router`).
    catalog : tiled client root or callable returning one, optional
        Where to find the raw run of a run joined in mid-flight; no joins when None.
    processors : list, optional
        Collects the processors made, so that callers can ``wait`` on them.
    """

    def __init__(self, make_processor: Callable[[], DocumentRouter], catalog=None,
                 processors: list | None = None):
        super().__init__()
        self.make_processor = make_processor
        self.processors = processors if processors is not None else []
        self._catalog = catalog
        self._runs: dict[str, DocumentRouter] = {}
        self._finished: set[str] = set()  # stopped runs: late documents are dropped quietly
        self._run_of: dict[str, str] = {}  # descriptor / (stream) resource uid -> run uid
        self.rejected: Counter = Counter()  #: documents not routed, by reason

    # ------------------------------------------------------------------------ routing
    def __call__(self, name, doc, validate=False):
        try:
            return super().__call__(name, doc, validate)
        except Exception as exc:  # noqa: BLE001 - never raise into the RunEngine
            self._reject(f"{name}: {type(exc).__name__}: {exc}")
            return name, doc

    def _reject(self, reason: str) -> None:
        self.rejected[reason] += 1
        if self.rejected[reason] == 1:
            logger.warning("labdct-live: document not routed (%s)", reason)

    def _to(self, run_uid: str | None, name: str, doc: dict) -> None:
        processor = self._runs.get(run_uid) if run_uid else None
        if processor is None and run_uid and run_uid not in self._finished:
            processor = self._join(run_uid)
        if processor is None:
            if run_uid not in self._finished:
                self._reject(f"{name} of unknown run {run_uid!r}")
            return
        processor(name, doc)

    def start(self, doc):
        uid = doc.get("uid")
        if not isinstance(uid, str):
            raise ValueError(f"start document without a string uid ({uid!r})")
        if uid in self._runs or uid in self._finished:
            self._reject(f"second start document of run {uid}")
            return
        self._new_processor(uid)("start", doc)

    def descriptor(self, doc):
        self._run_of[doc["uid"]] = doc["run_start"]
        self._to(doc["run_start"], "descriptor", doc)

    def event(self, doc):
        self._to(self._run_of.get(doc["descriptor"]) or self._find_run(doc["descriptor"]),
                 "event", doc)

    def resource(self, doc):
        run = doc.get("run_start")
        if run is None:  # old resources name no run: every current run may need it
            for processor in list(self._runs.values()):
                processor("resource", doc)
            return
        self._run_of[doc["uid"]] = run
        self._to(run, "resource", doc)

    def datum(self, doc):
        run = self._run_of.get(doc["resource"])
        for processor in [self._runs[run]] if run in self._runs else list(self._runs.values()):
            processor("datum", doc)

    def stream_resource(self, doc):
        self._run_of[doc["uid"]] = doc["run_start"]
        self._to(doc["run_start"], "stream_resource", doc)

    def stream_datum(self, doc):
        run = self._run_of.get(doc["stream_resource"]) or self._run_of.get(
            doc.get("descriptor", "")) or self._find_run(doc.get("descriptor", ""))
        self._to(run, "stream_datum", doc)

    def stop(self, doc):
        run = doc["run_start"]
        self._to(run, "stop", doc)
        if self._runs.pop(run, None) is not None:
            self._finished.add(run)
            self._run_of = {k: v for k, v in self._run_of.items() if v != run}

    # -------------------------------------------------------------- mid-flight joins
    def _new_processor(self, uid: str) -> DocumentRouter:
        processor = self.make_processor()
        self._runs[uid] = processor
        self.processors.append(processor)
        return processor

    def _client(self):
        if self._catalog is None:
            raise LookupError("no catalog to read the run from")
        return self._catalog() if callable(self._catalog) else self._catalog

    def _find_run(self, descriptor_uid: str) -> str | None:
        """The uid of the recent raw run in the catalog that has this descriptor."""
        try:
            client = self._client()
            for run_uid in list(client.keys()[-20:])[::-1]:
                run = client[run_uid]
                for stream in run:
                    if run[stream].metadata.get("uid") == descriptor_uid:
                        self._run_of[descriptor_uid] = run_uid
                        return run_uid
        except Exception as exc:  # noqa: BLE001 - no catalog: the document is rejected
            logger.warning("cannot look for the run of descriptor %s in the catalog: %s",
                           descriptor_uid, exc)
        return None

    def _join(self, run_uid: str) -> DocumentRouter | None:
        """Start processing a run whose start document went by before this router existed."""
        try:
            run = self._client()[run_uid]
            start = dict(run.metadata["start"])
            descriptors = [{**run[s].metadata, "name": s, "run_start": run_uid}
                           for s in run]
        except Exception as exc:  # noqa: BLE001 - not in the catalog (yet): cannot join
            logger.warning("documents of run %s, whose start this worker never saw, and the "
                           "run is not readable in the catalog (%s)", run_uid, exc)
            return None
        logger.warning("joining run %s in mid-flight: its start document and %d descriptor(s) "
                       "read from the catalog; earlier frames are read from the raw run at "
                       "its end", run_uid, len(descriptors))
        processor = self._new_processor(run_uid)
        processor("start", start)
        for descriptor in descriptors:
            self._run_of[descriptor["uid"]] = run_uid
            processor("descriptor", descriptor)
        return processor

