"""Per-frame processing methods behind one interface, for live and offline use.

A method consumes frames with their scan index and returns :class:`ProcessedFrame` results:
the binary spot mask, the spot table with per-spot SNR, and a per-frame summary. The U-Net
method answers at once; the standard routine answers when its rolling window is complete and
needs the frames in order, so :class:`RoutineMethod` reorders what it is given.

=========  ==========================================================================
``dl``     the shipped (or a given) U-Net, then one threshold (:mod:`labdct_live.models`)
``routine`` the standard routine: rolling median + LoG (:mod:`labdct_live.segmentation`)
``auto``   ``dl`` when a pretrained model is installed, ``routine`` otherwise
=========  ==========================================================================
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labdct_live.io.frames import FrameReadError
from labdct_live.io.frames import check_frame as io_check_frame
from labdct_live.segmentation.routine import RoutineParams, StandardRoutine
from labdct_live.segmentation.snr import snr_summary, spot_snr
from labdct_live.segmentation.spot_schema import conform_spots
from labdct_live.segmentation.spots import label_spots, spot_table

__all__ = ["ProcessedFrame", "ProcessingMethod", "DLMethod", "RoutineMethod", "make_method",
           "METHODS", "FrameError", "check_frame"]

logger = logging.getLogger(__name__)

METHODS = ("auto", "dl", "routine")

#: Share of a frame's segmented pixels that are static (:class:`StaticMaskWatch`) above
#: which the ``dl`` method warns that it segments the background.
STATIC_WARNING_SHARE = 0.2

#: Spots below this SNR count as weak in the per-frame summary.
WEAK_SNR = 2.0

#: A frame that cannot be processed (wrong shape or dtype, NaNs, corrupt).
FrameError = FrameReadError


def check_frame(frame: Any, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A detector frame checked by :func:`labdct_live.io.frames.check_frame`, with a leading axis of
    length 1 dropped and its shape checked against the scan's; raises :class:`FrameError`."""
    try:
        frame = np.asarray(frame)
    except Exception as exc:  # noqa: BLE001 - any failure to make an array is a bad frame
        raise FrameError(f"not an image: {exc}") from exc
    if frame.ndim == 3 and frame.shape[0] == 1:
        frame = frame[0]
    frame = io_check_frame(frame)
    if shape is not None and frame.shape != tuple(shape):
        raise FrameError(f"frame shape {frame.shape} differs from the scan's {tuple(shape)}")
    return frame


@dataclass
class ProcessedFrame:
    """The result of processing one frame."""

    index: int
    binary: np.ndarray  #: uint8 {0, 1}
    #: the spot table (:data:`labdct_live.segmentation.spot_schema.SPOT_COLUMNS`)
    spots: pd.DataFrame
    summary: dict  #: :func:`labdct_live.segmentation.snr.snr_summary` of the frame
    seconds: float = 0.0  #: processing time
    extra: dict = field(default_factory=dict)


def _measure(index: int, frame: np.ndarray, labels: np.ndarray, exclude: np.ndarray | None,
             intensity: np.ndarray, seconds: float) -> ProcessedFrame:
    spots = spot_table(labels, intensity)
    snr = spot_snr(frame, labels, exclude=exclude)
    spots = conform_spots(spots.merge(snr[["label", "snr", "visible"]], on="label", how="left"),
                          frame=index)
    return ProcessedFrame(index=index, binary=(labels > 0).astype(np.uint8), spots=spots,
                          summary=snr_summary(snr, low=WEAK_SNR), seconds=seconds)


class ProcessingMethod:
    """Interface: ``push(index, frame) -> [ProcessedFrame]``, ``finish() -> [...]``."""

    name = "base"

    def push(self, index: int, frame: np.ndarray) -> list[ProcessedFrame]:
        raise NotImplementedError

    def skip(self, index: int) -> list[ProcessedFrame]:
        """Frame ``index`` will never come (it was bad); methods that wait for order move on."""
        return []

    def finish(self) -> list[ProcessedFrame]:
        return []

    def describe(self) -> dict:
        """Provenance: method name, parameters, model version and hash."""
        return {"method": self.name}


class DLMethod(ProcessingMethod):
    """U-Net denoising then one threshold.

    Parameters
    ----------
    model : str, path or torch.nn.Module, optional
        A checkpoint file or module; the shipped pretrained model when None.
    threshold : float, optional
        Threshold on the denoised image; the model's recommended one when None.
    min_size : int, optional
        Smallest spot kept (pixels); :data:`labdct_live.models.inference.DEFAULT_MIN_SIZE`
        when None.
    exclude : ndarray of bool, optional
        Beam-stop mask.
    static : bool, optional
        Feed the network the frame minus its static background
        (:class:`labdct_live.segmentation.scan_filters.StaticBackground`); None: as the model
        was trained (checkpoint ``inference.input == "static"``, e.g. ``labdct-live adapt``).
    static_background : array or path, optional
        The static background (e.g. the scan's stack median); None: the model's, if it
        carries one, until ``static_window`` frames give a rolling median.
    static_window : int
        Frames of the rolling median (0: ``static_background`` only).
    zinger_threshold : float, optional
        Counts above the 8-neighbour median of a single-pixel spike that is replaced before
        the network (:func:`~labdct_live.segmentation.scan_filters.reject_zingers`); None: the
        model's ``inference.zinger_threshold``; 0: off.
    grow : float, optional
        Lower threshold into which spots grow (hysteresis, full extent); None: the model's
        ``inference.grow``; 0: off.
    min_contrast : float, optional
        Spots whose peak in the frame minus its static background is below this many counts
        are dropped (with ``static`` only); None: the model's ``inference.min_contrast``;
        0: off.
    **denoiser_options
        Passed to :class:`labdct_live.models.inference.Denoiser` (tile, threads, device ...).
    """

    name = "dl"

    def __init__(self, model=None, threshold: float | None = None,
                 min_size: int | None = None, exclude: np.ndarray | None = None,
                 static: bool | None = None, static_background=None, static_window: int = 20,
                 zinger_threshold: float | None = None, grow: float | None = None,
                 min_contrast: float | None = None, **denoiser_options):
        from labdct_live.models.domain import DomainCheck
        from labdct_live.models.inference import DEFAULT_MIN_SIZE, Denoiser
        from labdct_live.segmentation.scan_filters import StaticBackground, StaticMaskWatch

        self.denoiser = Denoiser(model, **denoiser_options)
        self.threshold = float(self.denoiser.threshold if threshold is None else threshold)
        inference = dict(self.denoiser.metadata.get("inference") or {})
        self.min_size = int(inference.get("min_size", DEFAULT_MIN_SIZE) if min_size is None
                            else min_size)
        self.exclude = exclude
        if static is None:
            static = inference.get("input") == "static"
        if static_background is None and inference.get("static_background") is not None:
            static_background = np.asarray(inference["static_background"], dtype=np.float32)
        self.static = (StaticBackground(static_background, window=int(static_window))
                       if static else None)
        self.zinger_threshold = float(inference.get("zinger_threshold") or 0.0
                                      if zinger_threshold is None else zinger_threshold)
        self.grow = float(inference.get("grow") or 0.0 if grow is None else grow)
        self.min_contrast = float(inference.get("min_contrast") or 0.0 if min_contrast is None
                                  else min_contrast)
        if not 0.0 <= self.grow <= self.threshold:
            raise ValueError(f"grow must be in [0, threshold={self.threshold}], got {self.grow}")
        # frames unlike the training data are flagged (models.domain); a model saved without
        # its training range is not checked
        self.domain = DomainCheck.from_metadata(self.denoiser.metadata)
        self._flagged: frozenset[str] = frozenset()
        self._last_flags: dict[str, float] = {}
        self.static_watch = StaticMaskWatch()
        self._static_warned = False
        if model is None:  # the shipped model: its file is the provenance
            from labdct_live.models.pretrained import pretrained_path

            self._model_file = pretrained_path()
        else:
            self._model_file = model if isinstance(model, (str, Path)) else None

    def push(self, index: int, frame: np.ndarray) -> list[ProcessedFrame]:
        t0 = time.perf_counter()
        binary, denoised = self.segment_frame(frame)
        labels, _ = label_spots(binary)
        result = _measure(index, frame, labels, self.exclude, denoised,
                          time.perf_counter() - t0)
        static_share = self.static_watch(binary)
        result.extra.update(out_of_domain=self._last_flags, static_share=static_share)
        self._warn_static(index, static_share)
        return [result]

    def _warn_static(self, index: int, share: float) -> None:
        """Warn once when the masks start to follow the background (a share of the segmented
        pixels stays put while the sample turns), and when that stops."""
        if not np.isfinite(share):
            return
        # hysteresis: a share near the limit does not make the warning flicker
        high = share >= (STATIC_WARNING_SHARE / 2 if self._static_warned else
                         STATIC_WARNING_SHARE)
        if high and not self._static_warned:
            logger.warning(
                "frame %d: %.0f %% of the segmented pixels were segmented in nearly all of the "
                "previous %d frames; spots move with omega, so the segmentation follows static "
                "background structure (the model does not fit this instrument: see "
                "docs/adapt.md, or feed it the frame minus its static background)", index,
                100 * share, self.static_watch.window)
        elif not high and self._static_warned:
            logger.info("frame %d: static share of the segmentation back to %.0f %%", index,
                        100 * share)
        self._static_warned = high

    def _check_domain(self, network_input: np.ndarray) -> dict[str, float]:
        """Flags of the network's input; a warning when a scan's frames start (or stop)
        being unlike the training data, not one per frame."""
        if self.domain is None:
            return {}
        flags = self.domain(network_input, self.exclude)
        names = frozenset(flags)
        if names != self._flagged:
            if flags:
                logger.warning("%s", self.domain.describe(flags))
            else:
                logger.info("frame statistics back within the model's training data")
            self._flagged = names
        return flags

    def segment_frame(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(mask, denoised)`` of one frame: zingers out, static background subtracted (the
        frame then joins the rolling median), U-Net, threshold, growth; frames in ω order."""
        from labdct_live.segmentation.scan_filters import drop_faint, grow_spots, reject_zingers

        x = frame
        if self.zinger_threshold > 0:
            x, _ = reject_zingers(x, self.zinger_threshold)
        if self.static is not None:
            x = self.static(x)
        self._last_flags = self._check_domain(x)
        binary, denoised = self.denoiser.segment(x, self.threshold, min_size=self.min_size,
                                                 exclude=self.exclude, return_denoised=True)
        if self.grow > 0:
            binary = grow_spots(binary, denoised, self.grow, self.exclude)
        if self.min_contrast > 0 and self.static is not None:
            binary = drop_faint(binary, x, self.min_contrast)
        return binary, denoised

    def describe(self) -> dict:
        meta = self.denoiser.metadata
        return {"method": self.name, "threshold": self.threshold, "min_size": self.min_size,
                "static": self.static is not None, "zinger_threshold": self.zinger_threshold,
                "grow": self.grow, "min_contrast": self.min_contrast,
                "model_name": meta.get("name") or meta.get("architecture", ""),
                "model_version": str(meta.get("package_version", "")),
                "model_hash": meta.get("sha256", "") or _file_hash(self._model_file)}


def _file_hash(path) -> str:
    if path is None or not Path(path).is_file():
        return ""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class RoutineMethod(ProcessingMethod):
    """The standard routine on a rolling window, fed in scan order.

    Frames may arrive out of order (a spooled backlog); they wait here until every earlier
    frame has arrived or been skipped (:meth:`skip`), because the rolling median needs its
    neighbours in order. A skipped (bad) frame is left out of the window.
    """

    name = "routine"

    def __init__(self, params: RoutineParams | None = None, exclude: np.ndarray | None = None,
                 circular: bool = True):
        self.params = params or RoutineParams()
        self.exclude = exclude
        self._routine = StandardRoutine(self.params, exclude, circular)
        self._waiting: dict[int, np.ndarray | None] = {}  # None marks a skipped frame
        self._frames: dict[int, np.ndarray] = {}  # raw frames until their result is out
        self._order: list[int] = []  # scan index of the routine's n-th frame
        self._next = 0

    def push(self, index: int, frame: np.ndarray) -> list[ProcessedFrame]:
        self._waiting[index] = frame
        return self._advance()

    def skip(self, index: int) -> list[ProcessedFrame]:
        self._waiting[index] = None
        return self._advance()

    def _advance(self) -> list[ProcessedFrame]:
        out = []
        while self._next in self._waiting:
            frame = self._waiting.pop(self._next)
            if frame is not None:
                out += self._feed(self._next, frame)
            self._next += 1
        return out

    def _feed(self, index: int, frame: np.ndarray) -> list[ProcessedFrame]:
        self._order.append(index)
        self._frames[index] = frame
        return self._results(self._routine.push(frame))

    def finish(self) -> list[ProcessedFrame]:
        out = []
        if any(f is not None for f in self._waiting.values()):
            logger.warning("frames before %s never arrived; processing the rest without them",
                           min(self._waiting))
        for index in sorted(self._waiting):
            frame = self._waiting.pop(index)
            if frame is not None:
                out += self._feed(index, frame)
        return out + self._results(self._routine.finish())

    def _results(self, results) -> list[ProcessedFrame]:
        out = []
        for r in results:
            t0 = time.perf_counter()
            index = self._order[r.index]
            frame = self._frames.pop(index)
            out.append(_measure(index, frame, r.labels, self.exclude, r.image,
                                time.perf_counter() - t0))
        return out

    def describe(self) -> dict:
        return {"method": self.name,
                **{f"routine_{k}": v for k, v in self.params.to_dict().items()}}


def make_method(method: str = "auto", *, exclude: np.ndarray | None = None,
                model=None, threshold: float | None = None,
                routine_params: RoutineParams | None = None, **options) -> ProcessingMethod:
    """Build a processing method by name (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        try:
            return DLMethod(model, threshold, exclude=exclude, **options)
        except (FileNotFoundError, RuntimeError, ImportError) as exc:
            logger.warning("no U-Net available (%s); processing with the standard routine", exc)
            return RoutineMethod(routine_params, exclude)
    if method == "dl":
        return DLMethod(model, threshold, exclude=exclude, **options)
    return RoutineMethod(routine_params, exclude)
