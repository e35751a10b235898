"""The live grain map: a partial reconstruction while the scan runs, and its quality signal.

:class:`LiveGrainMap` is a frame listener of the live processor
(``LiveConfig(listeners=[live_map.on_frame], end_of_scan=[live_map, EndOfScan(...,
live_map=live_map)])``). The listener only bins each binary frame and hands it over: the
RunEngine never waits for it, nor does the processor beyond a copy. The live map's own thread
computes the frame's distance maps at once
(:class:`~labdct_live.reconstruction.hitmaps.HitMapBuilder`) and, every ``every`` new frames
(or ``interval`` seconds), reconstructs the map from the frames so far, starting from the
grains of the previous update (``reconstruct(..., prior=...)``: the new frames add their
spots to the grains already found, and only the rest of the sample is searched). Each update
is written to ``processed/<node>/grainmap`` with ``status: partial``
(:func:`~labdct_live.callbacks.reconstruction.store_grainmap`; ``running`` while it is
written, so readers always see one whole map) and summed up as a
:class:`~labdct_live.callbacks.scan_quality.ScanQuality` with its decision (``continue``,
``enough``, ``raise exposure``), kept in :attr:`LiveGrainMap.history` and in the
``updates`` table of the ``grainmap`` node.

At the end of the scan (the live map is also an end-of-scan hook) no further update starts;
one under way is stopped. The end-of-scan reconstruction (``EndOfScan(reconstruct=...,
live_map=...)``) then makes the final map from the same frames, reusing the distance maps,
and writes it with ``status: complete``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from labdct_live.callbacks.reconstruction import (
    best_per_omega,
    scan_setup,
    store_grainmap,
)
from labdct_live.callbacks.scan_quality import (
    CONTINUE,
    DecisionRule,
    ScanQuality,
    decide,
    map_change,
    omega_gap,
)
from labdct_live.reconstruction.data import ReconstructionError, ScanData, bin_frames
from labdct_live.reconstruction.forward import ForwardModel
from labdct_live.reconstruction.hitmaps import HitMapBuilder
from labdct_live.reconstruction.pipeline import (
    LowCompletenessWarning,
    ReconstructionCancelled,
    ReconstructionOptions,
    reconstruct,
)
from labdct_live.reconstruction.spotindex import SpotLedger

__all__ = ["LiveGrainMap", "LiveMapSettings", "UPDATES_KEY"]

logger = logging.getLogger(__name__)

#: Key of the table of updates (one :class:`ScanQuality` per row) in the ``grainmap`` node.
UPDATES_KEY = "updates"


@dataclass(frozen=True)
class LiveMapSettings:
    """When and how the live grain map is updated.

    Parameters
    ----------
    every : int
        Update after this many new frames.
    interval : float or None
        Also update when this many seconds passed since the last update and a frame came
        since.
    min_frames : int
        Frames before the first update.
    bin : int
        The frames are OR-binned ``bin`` x ``bin`` (as ``EndOfScan(reconstruct_bin=...)``;
        the end-of-scan reconstruction reuses the maps only when the two agree).
    options : ReconstructionOptions
        Settings of each update's reconstruction.
    rule : DecisionRule
        The rule of the decision (:func:`~labdct_live.callbacks.scan_quality.decide`).
    store : bool
        Write each update to the catalog.
    """

    every: int = 20
    interval: float | None = None
    min_frames: int = 12
    bin: int = 2
    options: ReconstructionOptions = field(default_factory=ReconstructionOptions)
    rule: DecisionRule = field(default_factory=DecisionRule)
    store: bool = True

    def __post_init__(self) -> None:
        if self.every < 1 or self.min_frames < 1 or self.bin < 1:
            raise ValueError("every, min_frames and bin must be at least 1")
        if self.interval is not None and not self.interval > 0:
            raise ValueError(f"interval must be positive seconds or None, got {self.interval}")


class _Run:
    """What the live map holds of one run."""

    def __init__(self, node_key: str, start_doc: dict, client: Callable | None) -> None:
        self.client = client
        self.node_key = node_key
        geometry, self.material, self.envelope, self.extra = scan_setup(start_doc)
        self.geometry = geometry
        self.binned_geometry = None
        self.builder: HitMapBuilder | None = None
        self.frames: dict[int, np.ndarray] = {}
        self.omegas: dict[int, float] = {}
        self.exposures: dict[int, float] = {}
        self.pending = 0  # frames since the last update
        self.last_update = time.monotonic()
        self.closed = False
        self.closed_at = 0.0
        self.handed_over = False  # model_for has given the maps to the final reconstruction
        self.result = None
        self.threshold: float | None = None
        self.refusal: str | None = None  # why the latest update was refused, if it was
        self.history: list[ScanQuality] = []

    def frame_set(self) -> list[int]:
        """The frames of the map: one per ω (the longest exposure), by ω."""
        keys = np.array(sorted(self.frames))
        omegas = np.array([self.omegas[k] for k in keys])
        keep = keys[best_per_omega(omegas, np.array([self.exposures[k] for k in keys]))]
        return sorted(keep.tolist(), key=lambda k: (self.omegas[k], k))


class LiveGrainMap:
    """A grain map reconstructed while the scan runs (see the module docstring).

    Parameters
    ----------
    settings : LiveMapSettings, optional
    monitor : ExposureMonitor, optional
        Its exposure advice enters the quality signal (the ``raise exposure`` decision).
    report : callable, optional
        Receives a line per update (``print`` in the CLI); ``logger.info`` by default.

    Attributes
    ----------
    history : dict
        Per processed node, the :class:`ScanQuality` of every update, oldest first.
    errors : list of str
        Updates that failed (the scan goes on; the next update tries again).
    refused : dict
        Per run, why its latest update was refused by the reconstruction (e.g. masks that
        fill too many pixels): said once (a warning, ``errors`` and the report), then tried
        again after ``every`` more frames, not after each frame. Gone once one succeeds.
    """

    def __init__(self, settings: LiveMapSettings | None = None, monitor=None,
                 report: Callable[[str], None] | None = None) -> None:
        self.settings = settings or LiveMapSettings()
        self.monitor = monitor
        self.report = report or logger.info
        self.history: dict[str, list[ScanQuality]] = {}
        self.errors: list[str] = []
        self.refused: dict[str, str] = {}
        #: why :meth:`model_for` gave no model, per run
        self.not_reused: dict[str, str] = {}
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._updated = threading.Condition(self._lock)
        self._inbox: queue.Queue = queue.Queue()
        self._updating = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="live-grainmap", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------- processor side
    def on_frame(self, processor, row: dict, result) -> None:
        """Frame listener of :class:`~labdct_live.callbacks.live.LiveProcessor`."""
        binary = getattr(result, "binary", None)
        if binary is not None:
            self.add_frame(processor.node_key, processor.start_doc, int(row["frame"]),
                           row.get("omega"), row.get("exposure"), binary,
                           client=processor.catalog_client)

    def add_frame(self, node_key: str, start_doc: dict, index: int, omega, exposure,
                  binary: np.ndarray, client: Callable | None = None) -> None:
        """Bin one binary frame and hand it to the live map's thread (returns at once).

        Parameters
        ----------
        node_key : str
            The run's key under ``processed``.
        start_doc : dict
            The run's start document (geometry, sample: its first frame sets the run up).
        index : int
            Frame number; a frame re-taken at the same ω is a new index.
        omega, exposure : float
            Rotation angle (degrees; frames without one are ignored) and exposure (s).
        binary : ndarray, shape (H, W)
            The segmentation (non-zero = spot).
        client : callable, optional
            ``client() -> tiled client``: where updates are written (not stored when None).
        """
        if omega is None or not np.isfinite(omega):
            logger.debug("run %s, frame %d: no rotation angle, not in the live map", node_key,
                         index)
            return
        key = node_key
        with self._lock:
            if key in self._runs:
                run = self._runs[key]
                if run is None:  # no live map for this run (said once, below)
                    return
            else:
                self._free_closed_runs()
                try:
                    run = self._runs[key] = _Run(key, start_doc, client)
                except ReconstructionError as exc:  # no geometry, material or sample size
                    self._runs[key] = None
                    self.errors.append(f"run {key}: no live grain map: {exc}")
                    logger.warning("run %s: no live grain map: %s", key, exc)
                    return
                self.history[key] = run.history
            if run.closed:
                logger.debug("run %s, frame %d: came after the end of the scan", key, index)
                return
        frame = bin_frames(np.asarray(binary)[None] > 0, self.settings.bin)[0]
        self._inbox.put((run, int(index), float(omega),
                         float(exposure) if exposure is not None else np.nan, frame))

    def _free_closed_runs(self) -> None:
        # A new run frees the maps of closed runs that the end-of-scan reconstruction has
        # taken (model_for), and of all but the newest closed run: its reconstruction may
        # still be on its way while the next run's first frames arrive.
        closed = [r for r in self._runs.values() if r is not None and r.closed]
        newest = max(closed, key=lambda r: r.closed_at, default=None)
        for old in closed:
            if old.handed_over or old is not newest:
                old.frames, old.builder = {}, None

    def __call__(self, processor) -> None:
        """End-of-scan hook: :meth:`close_run` of the processor's run."""
        self.close_run(processor.node_key)

    def close_run(self, node_key: str, timeout: float = 600.0) -> None:
        """No update of run ``node_key`` starts after this; one under way is stopped, and
        the frames handed over are digested (their maps serve the final reconstruction)."""
        with self._lock:
            run = self._runs.get(node_key)
            if run is None:
                return
            run.closed = True
            run.closed_at = time.monotonic()
        self.wait_idle(timeout=timeout)

    # ------------------------------------------------------------------ readers
    def decision(self, node_key: str | None = None) -> str:
        """The latest decision (``continue`` before the first update); of the newest run
        when ``node_key`` is None."""
        with self._lock:
            if node_key is None:
                node_key = next(reversed(self.history), None) if self.history else None
            history = self.history.get(node_key) if node_key else None
            return history[-1].decision if history else CONTINUE

    def current_map(self, node_key: str):
        """The newest update's :class:`~labdct_live.reconstruction.ReconstructionResult`
        of run ``node_key`` (None before the first)."""
        with self._lock:
            run = self._runs.get(node_key)
            return None if run is None else run.result

    def latest(self, node_key: str | None = None) -> ScanQuality | None:
        """The newest :class:`ScanQuality` (of the newest run when ``node_key`` is None)."""
        with self._lock:
            if node_key is None:
                node_key = next(reversed(self.history), None) if self.history else None
            history = self.history.get(node_key) if node_key else None
            return history[-1] if history else None

    def wait_for_update(self, node_key: str, after: int = 0,
                        timeout: float | None = None) -> ScanQuality | None:
        """Block until run ``node_key`` has more than ``after`` updates (or ``timeout``)."""
        with self._updated:
            self._updated.wait_for(lambda: len(self.history.get(node_key, [])) > after,
                                   timeout)
            history = self.history.get(node_key, [])
            return history[-1] if len(history) > after else None

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every frame handed over is digested and no update runs."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._inbox.unfinished_tasks or self._updating.is_set():
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def model_for(self, node_key: str, scan: ScanData) -> ForwardModel | None:
        """A forward model of ``scan`` on the distance maps already computed, when the live
        map holds exactly ``scan``'s frames (same ω, same pixels); else None."""
        with self._lock:
            run = self._runs.get(node_key)
        why = None
        if run is None or run.builder is None:
            why = "the live map holds no frame of this run"
        else:
            keys = run.frame_set()
            order = np.argsort(scan.omegas, kind="stable")
            if len(keys) != scan.n_frames:
                why = f"it holds {len(keys)} frames, the scan has {scan.n_frames}"
            elif run.binned_geometry.to_dict() != scan.geometry.to_dict():
                why = "another geometry (binning?)"
            elif not all(np.isclose(run.omegas[k], scan.omegas[i])
                         and np.array_equal(run.frames[k], scan.frames[i])
                         for k, i in zip(keys, order)):
                why = "other frames or angles"
        if why is not None:
            logger.info("run %s: the live map's distance maps are not reused: %s", node_key,
                        why)
            self.not_reused[node_key] = why
            return None
        maps = run.builder.stack([keys[j] for j in np.argsort(order)])
        run.handed_over = True
        return ForwardModel.from_scan(scan, maps)

    # ------------------------------------------------------------------- thread
    def _loop(self) -> None:
        while True:
            try:  # wake up now and then: an ``interval`` may fall due between frames
                item = self._inbox.get(timeout=0.5)
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    self._digest(*item)
                if self._inbox.empty():  # catch up on frames first, then update
                    for run in list(self._runs.values()):
                        if run is not None and self._due(run):
                            self._updating.set()
                            self._update(run)
            except Exception as exc:  # noqa: BLE001 - the scan must go on
                logger.exception("live grain map failed")
                self.errors.append(f"live grain map: {exc}")
            finally:
                self._updating.clear()
                if item is not None:
                    self._inbox.task_done()

    def _digest(self, run: _Run, index: int, omega: float, exposure: float,
                frame: np.ndarray) -> None:
        # also after the end of the scan: the final reconstruction reuses the maps
        if run.builder is None:
            run.binned_geometry = (run.geometry if self.settings.bin == 1
                                   else run.geometry.binned(frame.shape))
            run.builder = HitMapBuilder(run.binned_geometry)
        run.builder.add(index, frame)
        run.frames[index] = frame
        run.omegas[index] = omega
        run.exposures[index] = exposure
        run.pending += 1

    def _due(self, run: _Run) -> bool:
        if run.closed or run.pending == 0 or len(run.frames) < self.settings.min_frames:
            return False
        if run.pending >= self.settings.every:
            return True
        if run.result is None and run.refusal is None:  # the first map as soon as it can be
            return True
        interval = self.settings.interval
        return interval is not None and time.monotonic() - run.last_update >= interval

    def _update(self, run: _Run) -> None:
        t0 = time.perf_counter()
        run.pending = 0
        run.last_update = time.monotonic()
        keys = run.frame_set()
        scan = ScanData(np.stack([run.frames[k] for k in keys]),
                        np.array([run.omegas[k] for k in keys]), run.binned_geometry,
                        run.material, run.envelope, source=f"live map of {run.node_key}",
                        extra=run.extra)
        model = ForwardModel.from_scan(scan, run.builder.stack(keys))
        previous = run.result
        prior = None
        if previous is not None and len(previous.grains):
            prior = (previous.grainmap.orientations[1:],
                     previous.grains[["x", "y", "z"]].to_numpy(float))
        with warnings.catch_warnings():  # a partial map is often poor: the signal says so
            warnings.simplefilter("ignore", LowCompletenessWarning)
            try:
                result = reconstruct(scan, self.settings.options, model=model, prior=prior,
                                     threshold=run.threshold,
                                     cancel=lambda: run.closed)
            except ReconstructionCancelled:
                return
            except ReconstructionError as exc:  # the frames, not the code: say it once
                self._refuse(run, str(exc))
                return
        if run.threshold is None:
            run.threshold = result.threshold
        quality = self._quality(run, model, result, previous, scan, time.perf_counter() - t0)
        with self._lock:
            if run.closed:  # the end of the scan came first: its map is the one to keep
                return
            run.refusal = None
            self.refused.pop(run.node_key, None)
            run.result = result
            run.history.append(quality)
            self._updated.notify_all()
        self.report(f"live grain map, update {quality.update} ({quality.n_frames} frames, "
                    f"{quality.time:.0f} s): {quality.n_grains} grains, median completeness "
                    f"{quality.completeness_median:.2f}, {100 * quality.change:.1f} % of the "
                    f"voxels changed, {100 * quality.spots_explained:.0f} % of the spots "
                    f"explained -> {quality.decision} ({quality.reason})")
        if self.settings.store and run.client is not None:
            self._store(run, result, quality)

    def _refuse(self, run: _Run, reason: str) -> None:
        with self._lock:  # said once until an update succeeds (the % filled moves a little)
            again = run.refusal is not None
            run.refusal = self.refused[run.node_key] = reason
        if again:
            logger.debug("run %s: live grain map update refused again: %s", run.node_key,
                         reason)
            return
        message = (f"run {run.node_key}: live grain map update refused ({len(run.frames)} "
                   f"frames; retried after {self.settings.every} more): {reason}")
        self.errors.append(message)
        logger.warning(message)
        if self.report != logger.info:  # the CLI prints it; a default report would log twice
            self.report(message)

    def _quality(self, run: _Run, model: ForwardModel, result, previous, scan: ScanData,
                 seconds: float) -> ScanQuality:
        grains = result.grains
        comp = grains["completeness"].to_numpy(float) if len(grains) else np.zeros(1)
        ledger = SpotLedger(model)
        mats = result.grainmap.orientations[1:]
        for (x, y, z), u in zip(grains[["x", "y", "z"]].to_numpy(float), mats):
            ledger.explain(model, np.array([x, y, z]), u, self.settings.options.search.tol_px)
        explained = float(ledger.explained.mean()) if len(ledger.explained) else 0.0
        change, new, lost = map_change(
            None if previous is None else previous.grainmap.grain_ids,
            None if previous is None else previous.grainmap.orientations,
            result.grainmap.grain_ids, result.grainmap.orientations,
            mask=result.grainmap.mask)
        exposure = run.exposures[max(run.exposures)]
        advised = getattr(self.monitor, "advice", None)
        quality = ScanQuality(
            update=len(run.history) + 1, n_frames=scan.n_frames,
            max_gap=omega_gap(scan.omegas), n_grains=int(len(grains)),
            completeness_p10=float(np.percentile(comp, 10)),
            completeness_median=float(np.median(comp)),
            completeness_p90=float(np.percentile(comp, 90)), change=change,
            new_grains=new, lost_grains=lost, spots_explained=explained,
            exposure=None if not np.isfinite(exposure) else exposure,
            advised_exposure=None if advised is None else float(advised), time=seconds)
        decision, reason = decide([*run.history, quality], self.settings.rule)
        return replace(quality, decision=decision, reason=reason, finished=time.time())

    def _store(self, run: _Run, result, quality: ScanQuality) -> None:
        try:
            client = run.client()
            with self._lock:  # the end of the scan must not find a partial write under way
                if run.closed:
                    return
                container = store_grainmap(
                    client, run.node_key, result, status="running",
                    extra={"live_update": quality.update, "frames_used": quality.n_frames,
                           "decision": quality.decision, "reason": quality.reason})
                table = pd.DataFrame([q.to_dict() for q in run.history])
                if UPDATES_KEY in container:
                    container.delete_contents([UPDATES_KEY], external_only=False)
                container.write_table(table, key=UPDATES_KEY, metadata={
                    "description": "one row per live grain-map update (ScanQuality)"})
                container.update_metadata({"status": "partial"})
        except Exception as exc:  # noqa: BLE001 - a catalog away: the next update writes
            logger.warning("run %s: live grain map not stored: %s", run.node_key, exc)
            self.errors.append(f"run {run.node_key}, update {quality.update}: not stored: "
                               f"{exc}")
