"""The live processor: each projection is segmented as it arrives and its results go to tiled.

:class:`LiveProcessor` is an :class:`event_model.DocumentRouter` for one run; build one per run
with :func:`live_router` (a :class:`~labdct_live.callbacks.router.LiveRouter`). In the
RunEngine's thread it only collects frames (pixels or references) into an
:class:`~labdct_live.callbacks.inbox.Inbox`, which never blocks; a worker thread loads each
frame, runs the processing method, writes the binary frame, the per-frame row and the spot
rows to ``processed/<raw uid>`` (see :mod:`labdct_live.catalog.processed`) and tells the listeners
(the exposure monitor).

At the stop document the worker drains the inbox and **reconciles** with the run: the stop
document says how many frames the run took; a frame it has no row for (its event, datum or
stream datum was lost on the way, or it went by before a worker joined) is read from the raw
run in the catalog and processed (backfill). Then it finishes the method (the routine's last
windows), writes the node's final status and calls the end-of-scan hooks (export,
comparison). The status is ``complete`` only when every frame of the run is processed:

=========================  ============================================================
``complete``               a row per frame of the run, all processed
``complete-with-errors``   a row per frame; some failed (the row says why)
``incomplete``             frames missing: rows ``missing: <why>``, listed in ``missing``
``aborted`` / ``failed``   the scan was aborted or failed; what it took is processed
=========================  ============================================================

Nothing here raises into the RunEngine: every document handler is guarded, and every frame is
accounted for: processed, failed with its reason, or missing with its reason.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from event_model import DocumentRouter

from labdct_live.callbacks.inbox import END, FrameItem, Inbox
from labdct_live.callbacks.readers import (
    CallableFrameRef,
    CatalogRunFrames,
    ErrorFrameRef,
    FrameRef,
    HDF5FrameRef,
)
from labdct_live.callbacks.router import LiveRouter
from labdct_live.catalog.errors import describe_catalog_error
from labdct_live.catalog.processed import ProcessedRunWriter, frame_row, frames_in_catalog
from labdct_live.io.names import safe_key
from labdct_live.methods import FrameError, ProcessedFrame, check_frame, make_method
from labdct_live.simulation.geometry import Geometry

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
        Processing method (see :mod:`labdct_live.methods`).
    method_options : dict
        Passed to :func:`labdct_live.methods.make_method` (model, threshold, ...).
    image_key, rotation_key, exposure_key : str or None
        Data keys of the detector image, the rotation angle ω and the exposure time; when
        None, the start document's ``image_key``, ``rotation_key`` and ``exposure_key``
        (:func:`labdct_live.acquisition.plans.labdct_scan` writes them). Nothing is guessed:
        a run that names no image key is not processed (status ``failed``, with the reason
        in :attr:`LiveProcessor.errors`), and an unnamed ω or exposure is recorded as NaN.
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
    retry_interval : float
        Seconds between attempts to reach a catalog that is away.
    finalize_timeout : float
        Seconds the worker waits, at the end of a run, for a catalog that is away.
    backfill_timeout : float
        Seconds the worker waits, at the end of a run, for missing frames to appear in the
        raw run in the catalog.
    frame_source : callable, optional
        ``frame_source(index) -> frame``: read frames from here (e.g. a tiled array during a
        replay) instead of what the documents point at.
    """

    client: object
    method: str = "auto"
    method_options: dict = field(default_factory=dict)
    image_key: str | None = None
    rotation_key: str | None = None
    exposure_key: str | None = None
    queue_size: int = 16
    spool_dir: str | Path | None = None
    listeners: list = field(default_factory=list)
    end_of_scan: list = field(default_factory=list)
    node_key: Callable[[str], str] = field(default=lambda uid: uid)
    extra_metadata: dict = field(default_factory=dict)
    retry_interval: float = 2.0
    finalize_timeout: float = 300.0
    backfill_timeout: float = 60.0
    frame_source: Callable[[int], np.ndarray] | None = None


class LiveProcessor(DocumentRouter):
    """Processes one run's projections live (see the module docstring)."""

    def __init__(self, config: LiveConfig):
        super().__init__()
        self.config = config
        self.start_doc: dict | None = None
        self.stop_doc: dict | None = None
        self.raw_uid = ""
        self.node_key = ""
        self.n_frames = 0
        self.geometry: Geometry | None = None
        self.frame_shape: tuple[int, int] | None = None
        self.counts = {"received": 0, "processed": 0, "failed": 0, "written": 0,
                       "spooled_inbox": 0, "spooled_results": 0, "document_errors": 0,
                       "duplicates": 0, "backfilled": 0, "missing": 0}
        self.errors: list[str] = []
        self.rows: dict[int, dict] = {}
        self.missing: dict[int, str] = {}  #: frames of the run without a result, and why
        self.status = "running"  #: the node's status; final once :attr:`done` is set
        self.results_complete = False  #: every frame of the run has its row in the catalog
        self.writer: ProcessedRunWriter | None = None
        self.method = None
        self.inbox: Inbox | None = None
        self.done = threading.Event()
        self._cancelled: str | None = None  # why processing was stopped early
        self._worker: threading.Thread | None = None
        self._descriptors: dict[str, dict] = {}
        self._image_key: str | None = None
        self._unprocessable: str | None = None  #: why the run cannot be processed
        self._image_stream: str | None = None
        self._image_external = ""
        self._scalar_keys: dict[str, str | None] = {"omega": None, "exposure": None}
        self._resources: dict[str, dict] = {}
        self._stream_resources: dict[str, dict] = {}
        self._datums: dict[str, dict] = {}
        self._refs_by_seq: dict[int, FrameRef] = {}
        self._events_by_seq: dict[int, dict] = {}
        self._seen_seqs: set[int] = set()
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
        # The plan names its data keys in the start document (or the user in LiveConfig).
        self._image_key = self.config.image_key or doc.get("image_key")
        self._scalar_keys = {"omega": self.config.rotation_key or doc.get("rotation_key"),
                             "exposure": self.config.exposure_key or doc.get("exposure_key")}
        if self._image_key is None:
            self._unprocessable = (
                f"run {self.raw_uid}: neither LiveConfig.image_key nor the start document's "
                "'image_key' names the detector image, so no frame is processed (the package's "
                "plans write it; other plans: give md={'image_key': ...})")
            self.errors.append(self._unprocessable)
            logger.error("%s", self._unprocessable)
        geometry = doc.get("geometry")
        if geometry:
            try:
                self.geometry = Geometry.from_dict(geometry)
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
        if self._image_stream is not None:
            return
        keys = doc["data_keys"]
        key = self._image_key
        if key is None or key not in keys:
            return  # a stream without images (e.g. baseline readings)
        self._image_key, self._image_stream = key, doc.get("name", "primary")
        self._image_external = keys[key].get("external") or ""
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
        resource = self._stream_resources.get(doc["stream_resource"])
        if resource is None:  # went by before this worker joined: the backfill reads them
            return
        if resource.get("data_key", self._image_key) != self._image_key:
            return
        first_index = doc["indices"]["start"]
        seqs = range(doc["seq_nums"]["start"], doc["seq_nums"]["stop"])
        for offset, seq in enumerate(seqs):
            self._refs_by_seq[seq] = HDF5FrameRef.from_stream_resource(resource,
                                                                       first_index + offset)
            self._match(seq)

    def event(self, doc):
        if self._image_key not in self._descriptors.get(doc["descriptor"], {}).get(
                "data_keys", {}):
            return
        seq = doc["seq_num"]
        if seq in self._seen_seqs:
            self.counts["duplicates"] += 1
            logger.warning("event %d of run %s delivered again; dropped", seq, self.raw_uid)
            return
        self._seen_seqs.add(seq)
        self._events_by_seq[seq] = doc
        if self.config.frame_source is not None:
            self._enqueue(seq, ref=CallableFrameRef(self.config.frame_source, seq - 1))
        elif self._image_external.startswith("STREAM"):
            self._match(seq)  # the frame comes with a StreamDatum
        else:
            self._enqueue(seq, **self._frame_of(doc["data"].get(self._image_key)))

    def _frame_of(self, value) -> dict:
        """The pixels or the reference an event carries: ``frame=`` or ``ref=``."""
        if isinstance(value, str):  # Resource/Datum
            datum = self._datums.pop(value, None)
            if datum is None or datum["resource"] not in self._resources:
                return {"ref": ErrorFrameRef(f"the image names datum {value!r}, which is "
                                             "unknown")}
            return {"ref": HDF5FrameRef.from_resource_datum(self._resources[datum["resource"]],
                                                            datum)}
        if value is None:
            return {"ref": ErrorFrameRef(f"the event has no {self._image_key!r}")}
        try:
            return {"frame": np.asarray(value)}
        except (TypeError, ValueError) as exc:  # e.g. a ragged list
            return {"ref": ErrorFrameRef(f"not an image: {exc}")}

    def stop(self, doc):
        self.stop_doc = doc
        if self.inbox is not None:
            self.inbox.put(END)

    # ---------------------------------------------------------------- frame intake
    def _match(self, seq: int) -> None:
        """Queue frame ``seq`` once both its event (omega) and its reference are known."""
        if seq in self._events_by_seq and seq in self._refs_by_seq:
            self._enqueue(seq, ref=self._refs_by_seq.pop(seq))

    def _enqueue(self, seq: int, frame=None, ref=None) -> None:
        data = self._events_by_seq.pop(seq)["data"]
        item = FrameItem(index=seq - 1, omega=self._scalar(data, "omega"),
                         exposure=self._scalar(data, "exposure"), frame=frame, ref=ref)
        self.counts["received"] += 1
        self.inbox.put(item)
        self.counts["spooled_inbox"] = self.inbox.spooled

    def _scalar(self, data: dict, name: str) -> float:
        value = data.get(self._scalar_keys[name])
        return float(value) if np.isscalar(value) and not isinstance(value, str) else np.nan

    # ----------------------------------------------------------------------- worker
    def catalog_client(self):
        """The tiled client the results are written to (the configured client, or what its
        factory returns)."""
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
                if self._cancelled:
                    self._record_missing(item.index, f"not processed: {self._cancelled}")
                else:
                    self._process(item)
            if self._cancelled:
                results = []
                self._fail_pending(f"not processed: {self._cancelled}")
            else:
                self._backfill()
                try:
                    results = self.method.finish()
                except Exception as exc:  # e.g. fewer frames than the routine's window
                    results = []
                    self._fail_pending(f"error: {exc}")
            for result in results:
                self._emit(result)
            self._finalize()
        except Exception as exc:  # the worker must not die silently
            self.status = "failed"
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
            self._pending_meta.pop(item.index)
            self.counts["failed"] += 1
            self.errors.append(f"frame {item.index}: {exc}")
            logger.warning("frame %d not processed: %s", item.index, exc)
            self._write(item.index, None, frame_row(item.index, item.omega, item.exposure,
                                                    f"error: {exc}", None, 0.0), None)
            results = self.method.skip(item.index)
        for result in results:
            self._emit(result)

    # ------------------------------------------------------------- reconciliation
    def _expected_frames(self) -> int:
        """Frames the run took: the stop document's event count of the image stream; the
        planned number when the stop document does not say."""
        counted = ((self.stop_doc or {}).get("num_events") or {}).get(self._image_stream or "")
        if counted is not None:
            return int(counted)
        return self.n_frames or (max(self.rows, default=-1) + 1)

    def _backfill(self) -> None:
        """Process the frames of the run that never arrived whole, from the raw run."""
        accounted = set(self.rows) | set(self._pending_meta)
        missing = [i for i in range(self._expected_frames()) if i not in accounted]
        if missing:  # a worker that joined late: its predecessor may have written them
            accounted |= frames_in_catalog(self.catalog_client(), self.node_key)
            missing = [i for i in missing if i not in accounted]
        if not missing:
            return
        if self._unprocessable:  # every frame of the run is accounted for, with the reason
            for index in missing:
                self._record_missing(index, "not processed: the run names no image key")
            return
        logger.warning("run %s: frames %s never arrived whole; reading them from the raw run "
                       "in the catalog", self.raw_uid, _ranges(missing))
        source = self._raw_frames()
        for index in missing:
            try:
                frame, omega, exposure = source(index)
            except Exception as exc:  # noqa: BLE001 - any failure: the frame is missing
                reason = (describe_catalog_error(exc) if not isinstance(exc, LookupError)
                          else str(exc))
                self._record_missing(index, f"not received, and not read from the raw run: "
                                            f"{reason}")
                continue
            self.counts["backfilled"] += 1
            self._process(FrameItem(index, omega, exposure, frame=frame))

    def _raw_frames(self) -> Callable[[int], tuple[np.ndarray, float, float]]:
        if self.config.frame_source is not None:
            return lambda i: (self.config.frame_source(i), np.nan, np.nan)
        if self._image_key is None:
            raise LookupError("the run's image data key is not known")
        return CatalogRunFrames(self.catalog_client(), self.raw_uid,
                                self._image_stream or "primary", self._image_key,
                                self._scalar_keys["omega"], self._scalar_keys["exposure"],
                                timeout=self.config.backfill_timeout).read

    def _record_missing(self, index: int, reason: str) -> None:
        self.missing[index] = reason
        self.counts["missing"] += 1
        self.errors.append(f"frame {index}: {reason}")
        logger.error("run %s, frame %d: %s", self.raw_uid, index, reason)
        self._write(index, None, frame_row(index, np.nan, np.nan, f"missing: {reason}", None,
                                           0.0), None)

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
            n = max(self.n_frames, self._expected_frames(), index + 1)
            meta = {"raw_uid": self.raw_uid, **self.method.describe(),
                    "plan_name": (self.start_doc or {}).get("plan_name", ""),
                    **self.config.extra_metadata}
            self.writer = ProcessedRunWriter(
                self.catalog_client(), self.node_key, n, meta, self._spool_root / "results",
                retry_interval=self.config.retry_interval, frame_shape=self.frame_shape)
        self.writer.write(index, binary, row, spots)
        self.counts["written"] = self.writer.written
        self.counts["spooled_results"] = self.writer.spooled_total

    def _final_status(self) -> str:
        if self._cancelled:
            return "aborted"
        if self._unprocessable:
            return "failed"
        exit_status = (self.stop_doc or {}).get("exit_status", "success")
        if exit_status in ("abort", "fail"):
            return {"abort": "aborted", "fail": "failed"}[exit_status]
        if self.missing:
            return "incomplete"
        return "complete-with-errors" if self.counts["failed"] else "complete"

    def _finalize(self) -> None:
        self.counts["max_queue_depth"] = self.inbox.max_depth
        self.counts["spool_errors"] = self.inbox.spool_errors
        self.counts["expected"] = self._expected_frames()
        self.status = self._final_status()
        if self.writer is None:  # the run took no frames
            self.results_complete = self.counts["expected"] == 0
            return
        self.counts["spool_errors"] += self.writer.spool_errors
        extra = {"missing": sorted(self.missing)} if self.missing else {}
        stored = self.writer.finalize(self.status, dict(self.counts),
                                      self.config.finalize_timeout, extra)
        self.counts["written"] = self.writer.written
        self.results_complete = stored and not self.missing
        if not stored:
            self.errors.append(f"results still wait in {self.writer.spool_dir}: the catalog "
                               "stayed away (labdct-live import-spool writes them later)")
            return  # exporting from a catalog that is away would only wait longer
        for hook in self.config.end_of_scan:
            try:
                hook(self)
            except Exception as exc:
                self.errors.append(f"end of scan {hook!r}: {exc}")
                logger.exception("end-of-scan hook %r failed", hook)

    # --------------------------------------------------------------------------- API
    def cancel(self, reason: str = "processing stopped by the user") -> None:
        """Stop processing soon: the frame in hand is finished, every frame still queued
        gets a row ``missing: not processed: <reason>``, and the node is marked ``aborted``
        (a replay from the raw run processes them later)."""
        self._cancelled = reason
        if self.inbox is not None:
            self.inbox.put(END)  # the stop document may never come

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run is finished; True when it finished with every frame's result
        in the catalog (:attr:`results_complete`), False otherwise or on timeout."""
        return self.done.wait(timeout) and self.results_complete

    @property
    def latest_row(self) -> dict | None:
        """The frames-table row of the most recently processed frame."""
        if not self.rows:
            return None
        return self.rows[max(self.rows)]


def _ranges(indices: list[int]) -> str:
    """``[1, 2, 3, 7]`` as ``"1-3, 7"``."""
    out, start = [], None
    for i, value in enumerate(indices):
        if start is None:
            start = value
        if i + 1 == len(indices) or indices[i + 1] != value + 1:
            out.append(f"{start}" if start == value else f"{start}-{value}")
            start = None
    return ", ".join(out)


def live_router(config: LiveConfig, processors: list | None = None) -> LiveRouter:
    """A :class:`~labdct_live.callbacks.router.LiveRouter` making a :class:`LiveProcessor` per
    run; it joins runs already under way by reading them from ``config.client``.

    ``processors`` (a list) collects the processors made, so callers can ``wait`` on them.
    """
    return LiveRouter(lambda: LiveProcessor(config), catalog=config.client,
                      processors=processors)
