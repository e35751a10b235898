"""The live processor: each projection is segmented as it arrives and its results go to tiled.

:class:`LiveProcessor` is an :class:`event_model.DocumentRouter` for one run; build one per run
with :func:`live_router` (an :class:`event_model.RunRouter`). In the RunEngine's thread it only
collects frames (pixels or references) into an :class:`~labdct_live.callbacks.inbox.Inbox`,
which never blocks; a worker thread loads each frame, runs the processing method, writes the
binary frame, the per-frame row and the spot rows to ``processed/<raw uid>`` (see
:mod:`labdct_live.processed`) and tells the listeners (the exposure monitor). At the stop
document the worker drains the inbox, finishes the method (the routine's last windows),
marks the node complete and calls the end-of-scan hooks (export, comparison).

Nothing here raises into the RunEngine: every document handler is guarded, and every frame is
accounted for: processed, or failed with its reason in the ``frames`` table, or spooled.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from event_model import DocumentRouter, RunRouter

from ..geometry import Geometry
from ..names import safe_key
from ..processed import ProcessedRunWriter, frame_row
from ..processing import FrameError, ProcessedFrame, check_frame, make_method
from .inbox import END, FrameItem, Inbox
from .readers import CallableFrameRef, FrameRef, HDF5FrameRef

__all__ = ["LiveConfig", "LiveProcessor", "live_router", "FrameListener"]

logger = logging.getLogger(__name__)

#: ``listener(processor, row, result)`` after each frame; ``row`` is the frames-table row.
FrameListener = Callable[["LiveProcessor", dict, "ProcessedFrame | None"], None]


@dataclass
class LiveConfig:
    """What the live processor does; shared by all runs of a :func:`live_router`.

    Parameters
    ----------
    client : tiled client root or callable returning one
        The catalog that receives ``processed/<raw uid>``.
    method : {"auto", "dl", "routine"}
        Processing method (see :mod:`labdct_live.processing`).
    method_options : dict
        Passed to :func:`labdct_live.processing.make_method` (model, threshold, ...).
    image_key : str or None
        Data key of the detector image; the first 2-D array key when None.
    queue_size : int
        Frames waiting in memory before they spill to the disk spool.
    spool_dir : path or None
        Root of the spools (per run); a temporary directory when None.
    listeners : list of callables
        :data:`FrameListener` s, e.g. :class:`~labdct_live.callbacks.monitor.ExposureMonitor`.
    end_of_scan : list of callables
        ``hook(processor)`` called by the worker once the run's results are complete.
    node_key : callable
        ``node_key(raw_uid) -> str``, the key under ``processed``.
    extra_metadata : dict
        Stored on the processed node.
    """

    client: object
    method: str = "auto"
    method_options: dict = field(default_factory=dict)
    image_key: str | None = None
    queue_size: int = 16
    spool_dir: str | Path | None = None
    listeners: list = field(default_factory=list)
    end_of_scan: list = field(default_factory=list)
    node_key: Callable[[str], str] = field(default=lambda uid: uid)
    extra_metadata: dict = field(default_factory=dict)
    retry_interval: float = 2.0
    finalize_timeout: float = 300.0
    #: ``frame_source(index) -> frame``: read frames from here (e.g. a tiled array during a
    #: replay) instead of what the documents point at.
    frame_source: Callable[[int], np.ndarray] | None = None


class LiveProcessor(DocumentRouter):
    """Processes one run's projections live (see the module docstring)."""

    def __init__(self, config: LiveConfig):
        super().__init__()
        self.config = config
        self.start_doc: dict | None = None
        self.raw_uid = ""
        self.node_key = ""
        self.n_frames = 0
        self.geometry: Geometry | None = None
        self.frame_shape: tuple[int, int] | None = None
        self.counts = {"received": 0, "processed": 0, "failed": 0, "written": 0,
                       "spooled_inbox": 0, "spooled_results": 0, "document_errors": 0}
        self.errors: list[str] = []
        self.rows: dict[int, dict] = {}
        self.writer: ProcessedRunWriter | None = None
        self.method = None
        self.inbox: Inbox | None = None
        self.done = threading.Event()
        self._worker: threading.Thread | None = None
        self._descriptors: dict[str, dict] = {}
        self._image_key: str | None = None
        self._resources: dict[str, dict] = {}
        self._stream_resources: dict[str, dict] = {}
        self._datums: dict[str, dict] = {}
        self._refs_by_seq: dict[int, FrameRef] = {}
        self._events_by_seq: dict[int, dict] = {}
        self._spool_root: Path | None = None
        self._pending_meta: dict[int, tuple[float, float]] = {}  # pushed, no result yet

    # -------------------------------------------------------------- guarded dispatch
    def __call__(self, name, doc, validate=False):
        try:
            return super().__call__(name, doc, validate)
        except Exception as exc:  # never raise into the RunEngine
            self.counts["document_errors"] += 1
            self.errors.append(f"{name}: {exc}")
            logger.exception("labdct-live could not handle a %s document", name)
            return name, doc

    # -------------------------------------------------------------------- documents
    def start(self, doc):
        self.start_doc = doc
        self.raw_uid = str(doc["uid"])
        # The uid comes from a document (maybe from the network): it names a folder and a key.
        self.node_key = safe_key(self.config.node_key(self.raw_uid), "processed node key")
        self.n_frames = int(doc.get("n_projections") or doc.get("num_points") or 0)
        geometry = doc.get("geometry")
        if geometry:
            try:
                self.geometry = Geometry(**{k: tuple(v) if isinstance(v, list) else v
                                            for k, v in geometry.items()})
            except (TypeError, ValueError) as exc:
                logger.warning("start document geometry not understood (%s); no beam-stop mask",
                               exc)
        root = Path(self.config.spool_dir or tempfile.mkdtemp(prefix="labdct-live-spool-"))
        self._spool_root = root / self.node_key
        self.inbox = Inbox(self.config.queue_size, self._spool_root / "inbox")
        self._worker = threading.Thread(target=self._work, name=f"labdct-live-{self.raw_uid[:8]}",
                                        daemon=True)
        self._worker.start()

    def descriptor(self, doc):
        self._descriptors[doc["uid"]] = doc
        if self._image_key is not None:
            return
        keys = doc["data_keys"]
        key = self.config.image_key
        if key is None:
            key = next((k for k, v in keys.items()
                        if len([s for s in v.get("shape", []) if s and s > 1]) == 2), None)
        if key is None or key not in keys:
            return  # a stream without images (e.g. baseline readings)
        self._image_key = key
        shape = [s for s in keys[key].get("shape", []) if s and s > 1]
        self.frame_shape = tuple(shape[-2:]) if len(shape) >= 2 else None

    def resource(self, doc):
        self._resources[doc["uid"]] = doc

    def datum(self, doc):
        self._datums[doc["datum_id"]] = doc

    def stream_resource(self, doc):
        self._stream_resources[doc["uid"]] = doc

    def stream_datum(self, doc):
        if self.config.frame_source is not None:
            return
        resource = self._stream_resources[doc["stream_resource"]]
        if resource.get("data_key", self._image_key) != self._image_key:
            return
        first_index = doc["indices"]["start"]
        seqs = range(doc["seq_nums"]["start"], doc["seq_nums"]["stop"])
        for offset, seq in enumerate(seqs):
            self._refs_by_seq[seq] = HDF5FrameRef.from_stream_resource(resource,
                                                                       first_index + offset)
            self._match(seq)

    def event(self, doc):
        if self._image_key is None or self._image_key not in self._descriptors.get(
                doc["descriptor"], {}).get("data_keys", {}):
            return
        seq = doc["seq_num"]
        if self.config.frame_source is not None:
            self._events_by_seq[seq] = doc
            self._enqueue(seq, ref=CallableFrameRef(self.config.frame_source, seq - 1))
            return
        value = doc["data"].get(self._image_key)
        if isinstance(value, str) and value in self._datums:  # Resource/Datum
            datum = self._datums.pop(value)
            self._refs_by_seq[seq] = HDF5FrameRef.from_resource_datum(
                self._resources[datum["resource"]], datum)
        elif value is not None and not isinstance(value, str):  # embedded image
            self._events_by_seq[seq] = doc
            self._enqueue(seq, frame=np.asarray(value))
            return
        self._events_by_seq[seq] = doc
        self._match(seq)

    def stop(self, doc):
        if self.inbox is not None:
            self.inbox.put(END)

    # ---------------------------------------------------------------- frame intake
    def _match(self, seq: int) -> None:
        """Queue frame ``seq`` once both its event (omega) and its reference are known."""
        if seq in self._events_by_seq and seq in self._refs_by_seq:
            self._enqueue(seq, ref=self._refs_by_seq.pop(seq))

    def _enqueue(self, seq: int, frame=None, ref=None) -> None:
        event = self._events_by_seq.pop(seq)
        data = event["data"]
        item = FrameItem(index=seq - 1, omega=_first_value(data, ("rotation", "omega"), np.nan),
                         exposure=_first_value(data, ("exposure",), np.nan),
                         frame=frame, ref=ref)
        self.counts["received"] += 1
        self.inbox.put(item)
        self.counts["spooled_inbox"] = self.inbox.spooled

    # ----------------------------------------------------------------------- worker
    def _client(self):
        client = self.config.client
        return client() if callable(client) else client

    def _work(self) -> None:
        try:
            exclude = self.geometry.beamstop_mask() if self.geometry is not None else None
            self.method = make_method(self.config.method, exclude=exclude,
                                      **self.config.method_options)
            while True:
                item = self.inbox.get()
                if item is END:
                    break
                self._process(item)
            try:
                results = self.method.finish()
            except Exception as exc:  # e.g. fewer frames than the routine's window
                results = []
                self._fail_pending(f"error: {exc}")
            for result in results:
                self._emit(result)
            self._finalize()
        except Exception as exc:  # the worker must not die silently
            self.errors.append(f"worker: {exc}")
            logger.exception("labdct-live worker failed for run %s", self.raw_uid)
        finally:
            self.done.set()

    def _process(self, item: FrameItem) -> None:
        self._pending_meta[item.index] = (item.omega, item.exposure)
        try:
            frame = check_frame(item.load(), self.frame_shape)
            if self.frame_shape is None:
                self.frame_shape = frame.shape
            results = self.method.push(item.index, frame)
        except (FrameError, OSError, ValueError) as exc:
            self.counts["failed"] += 1
            self.errors.append(f"frame {item.index}: {exc}")
            logger.warning("frame %d not processed: %s", item.index, exc)
            self._write(item.index, None, frame_row(item.index, item.omega, item.exposure,
                                                    f"error: {exc}", None, 0.0), None)
            results = self.method.skip(item.index)
        for result in results:
            self._emit(result)

    def _fail_pending(self, status: str) -> None:
        """Record every frame still waiting inside the method as failed."""
        logger.warning("frames %s not processed: %s", sorted(self._pending_meta), status)
        self.errors.append(status)
        for index in sorted(self._pending_meta):
            omega, exposure = self._pending_meta.pop(index)
            self.counts["failed"] += 1
            self._write(index, None, frame_row(index, omega, exposure, status, None, 0.0), None)

    def _emit(self, result: ProcessedFrame) -> None:
        omega, exposure = self._pending_meta.pop(result.index, (np.nan, np.nan))
        row = frame_row(result.index, omega, exposure, "ok", result.summary, result.seconds)
        self.counts["processed"] += 1
        self._write(result.index, result.binary, row, result.spots)
        for listener in self.config.listeners:
            try:
                listener(self, row, result)
            except Exception:  # a broken plot must not stop processing
                logger.exception("frame listener %r failed", listener)

    def _write(self, index, binary, row, spots) -> None:
        self.rows[index] = row
        if self.writer is None:
            n = self.n_frames or max(index + 1, 1)
            meta = {"raw_uid": self.raw_uid, **self.method.describe(),
                    "plan_name": (self.start_doc or {}).get("plan_name", ""),
                    **self.config.extra_metadata}
            self.writer = ProcessedRunWriter(
                self._client(), self.node_key, n, meta, self._spool_root / "results",
                retry_interval=self.config.retry_interval, frame_shape=self.frame_shape)
        self.writer.write(index, binary, row, spots)
        self.counts["written"] = self.writer.written
        self.counts["spooled_results"] = self.writer.spooled_total

    def _finalize(self) -> None:
        self.counts["max_queue_depth"] = self.inbox.max_depth
        if self.writer is not None:
            complete = self.writer.finalize(dict(self.counts), self.config.finalize_timeout)
            self.counts["written"] = self.writer.written
            if not complete:
                self.errors.append(f"results still spooled in {self.writer.spool_dir}")
        for hook in self.config.end_of_scan:
            try:
                hook(self)
            except Exception as exc:
                self.errors.append(f"end of scan {hook!r}: {exc}")
                logger.exception("end-of-scan hook %r failed", hook)

    # --------------------------------------------------------------------------- API
    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run's results are complete; True when done."""
        return self.done.wait(timeout)

    @property
    def latest_row(self) -> dict | None:
        """The frames-table row of the most recently processed frame."""
        if not self.rows:
            return None
        return self.rows[max(self.rows)]


def _first_value(data: dict, names: tuple[str, ...], default: float) -> float:
    """The value of the key named exactly like one of ``names``, else of the first key that
    ends with one of them (e.g. ``labdct_exposure``), else ``default``."""
    scalars = {k: v for k, v in data.items() if np.isscalar(v) and not isinstance(v, str)}
    for name in names:
        if name in scalars:
            return float(scalars[name])
    for name in names:
        for key, value in scalars.items():
            if key.endswith(name):
                return float(value)
    return default


def live_router(config: LiveConfig, processors: list | None = None) -> RunRouter:
    """A :class:`event_model.RunRouter` that makes a :class:`LiveProcessor` per run.

    ``processors`` (a list) collects the processors made, so callers can ``wait`` on them.
    """

    def factory(name, start_doc):
        processor = LiveProcessor(config)
        if processors is not None:
            processors.append(processor)
        return [processor], []

    return RunRouter([factory])
