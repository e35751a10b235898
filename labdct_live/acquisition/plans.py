"""Bluesky plans of a LabDCT acquisition: a rotation scan, an exposure-adapting scan and a
scan driven by the live grain map's quality signal.

The plans stage the detector and the rotation stage, open one run and, per projection, move
the stage, then ``trigger_and_read`` the detector and the stage (one event per frame in the
``primary`` stream, holding the omega readback and the exposure). The start document carries
what is needed to reproduce or process the scan:

===================  ===================================================================
key                  value
===================  ===================================================================
plan_name            ``"labdct_scan"``, ``"adaptive_exposure_scan"`` or ``"quality_scan"``
geometry             :meth:`labdct_live.simulation.geometry.Geometry.to_dict` with this scan's
                     omegas (mm, degrees), when the detector knows it (or given in ``md``)
sample               ``{"spec": SampleSpec.to_dict(), "seed": ..., "n_grains": ...}`` for a
                     simulated detector (or given in ``md``)
exposure             initial exposure time (s)
omegas               list of rotation angles (degrees), one per frame
n_projections        number of frames
detector             detector name
image_key            data key of the image (e.g. ``"labdct_image"``)
exposure_key         data key of the exposure (e.g. ``"labdct_exposure"``)
rotation_key         data key of the rotation readback (e.g. ``"rotation"``)
labdct_live_version  the package version
===================  ===================================================================

plus bluesky's usual ``detectors``, ``motors``, ``num_points``, ``plan_args`` and ``hints``;
the adaptive scan adds ``target_snr``, ``min_exposure``, ``max_exposure`` and ``damping``;
the quality scan adds ``omega_order`` and ``max_exposure`` (``omegas`` are the planned angles
in ω order; the events say in which order they were taken).

The examples use ``RE``, ``det`` and ``rotation`` made as in the example of
:class:`~labdct_live.acquisition.detector.LabDCTDetector`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np

from labdct_live import __version__
from labdct_live.segmentation.snr import exposure_for_snr

__all__ = [
    "PlanError",
    "adaptive_exposure_scan",
    "labdct_scan",
    "coarse_first_order",
    "next_exposure",
    "quality_scan",
    "scan_omegas",
]

logger = logging.getLogger(__name__)


class PlanError(ValueError):
    """Invalid plan arguments; the message names the parameter."""


def scan_omegas(start: float = -180.0, stop: float = 180.0, step: float = 2.0) -> np.ndarray:
    """Rotation angles from ``start`` to ``stop`` (included when a whole number of steps away).

    Examples
    --------
    >>> scan_omegas(-180, 180, 2).size
    181
    >>> scan_omegas(0, 5, 2).tolist()
    [0.0, 2.0, 4.0]
    """
    for name, value in (("start", start), ("stop", stop), ("step", step)):
        if not math.isfinite(value):
            raise PlanError(f"{name} must be a finite angle in degrees, got {value!r}")
    if step == 0:
        raise PlanError("step must be non-zero (degrees)")
    if (stop - start) * step < 0:
        raise PlanError(f"step {step} points away from stop {stop} (start {start}): "
                        "give step the sign of stop - start")
    n = math.floor((stop - start) / step + 1e-9) + 1
    return float(start) + float(step) * np.arange(n, dtype=np.float64)


def next_exposure(exposure: float, snr: float | None, target_snr: float,
                  min_exposure: float, max_exposure: float, damping: float = 0.5,
                  max_factor: float = 4.0) -> float:
    """The exposure for the next frame, given the SNR measured at ``exposure``.

    The undamped proposal is :func:`labdct_live.segmentation.snr.exposure_for_snr` (SNR grows as
    √exposure). It is damped geometrically, ``exposure * (proposal / exposure) ** damping``,
    because the spots change from frame to frame, limited to a factor ``max_factor`` per
    frame and clipped to ``[min_exposure, max_exposure]``.

    Parameters
    ----------
    exposure : float
        Exposure of the frame the SNR was measured on (s).
    snr : float or None
        That frame's mean spot SNR; None or NaN (no measurement yet) keeps the exposure, a
        value <= 0 (no spot above the noise) raises it by ``max_factor ** damping``.
    target_snr : float
    min_exposure, max_exposure : float
        Bounds (s).
    damping : float
        In (0, 1]; 1 jumps to the proposal.
    max_factor : float
        Largest change per frame (> 1).

    Examples
    --------
    >>> next_exposure(1.0, 2.0, 4.0, 0.1, 100.0, damping=1.0)
    4.0
    >>> next_exposure(1.0, 2.0, 4.0, 0.1, 100.0, damping=0.5)
    2.0
    """
    if not (0 < damping <= 1):
        raise PlanError(f"damping must be in (0, 1], got {damping!r}")
    if not max_factor > 1:
        raise PlanError(f"max_factor must be > 1, got {max_factor!r}")
    if snr is None or not math.isfinite(snr):
        proposal = exposure
    elif snr <= 0:
        proposal = exposure * max_factor
    else:
        proposal = exposure_for_snr(exposure, snr, target_snr)
    factor = float(np.clip(proposal / exposure, 1 / max_factor, max_factor)) ** damping
    return float(np.clip(exposure * factor, min_exposure, max_exposure))


def _data_key(obj, fallback: str) -> str:
    fields = getattr(obj, "hints", {}).get("fields") or []
    return fields[0] if fields else fallback


def _start_metadata(plan_name: str, detector, rotation, omegas: np.ndarray,
                    exposure: float, plan_args: dict, md: dict | None) -> dict:
    """The start document's metadata (see the module docstring); ``md`` wins on conflicts."""
    omegas_list = [float(w) for w in omegas]
    meta = {
        "plan_name": plan_name,
        "detectors": [detector.name],
        "motors": [rotation.name],
        "num_points": len(omegas_list),
        "num_intervals": len(omegas_list) - 1,
        "plan_args": plan_args,
        "hints": {"dimensions": [([_data_key(rotation, rotation.name)], "primary")]},
        "exposure": float(exposure),
        "omegas": omegas_list,
        "n_projections": len(omegas_list),
        "detector": detector.name,
        "exposure_key": detector.exposure.name,
        "rotation_key": _data_key(rotation, rotation.name),
        "labdct_live_version": __version__,
    }
    image = getattr(detector, "image", None)
    if image is not None:  # a detector without an ``image`` signal gives image_key in md
        meta["image_key"] = image.name
    geometry = getattr(detector, "geometry", None)
    if geometry is not None:
        step = omegas_list[1] - omegas_list[0] if len(omegas_list) > 1 else geometry.omega_step
        meta["geometry"] = geometry.with_(omega_start=omegas_list[0], omega_step=step,
                                          n_projections=len(omegas_list)).to_dict()
    if callable(getattr(detector, "sample_metadata", None)):
        meta["sample"] = detector.sample_metadata()
    meta.update(md or {})
    return meta


def _positive(name: str, value, what: str = "exposure time in seconds") -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise PlanError(f"{name} must be a positive {what}, got {value!r}")
    return number


def _rotation_scan(detector, rotation, omegas, exposure, md, after_frame=None):
    """Stage, open the run, and take one frame per omega; ``after_frame(i)`` is a plan."""

    @bpp.stage_decorator([detector, rotation])
    @bpp.run_decorator(md=md)
    def inner():
        yield from bps.mv(detector.exposure, exposure)
        for i, omega in enumerate(omegas):
            yield from bps.checkpoint()
            yield from bps.mv(rotation, float(omega))
            yield from bps.trigger_and_read([detector, rotation])
            if after_frame is not None and i < len(omegas) - 1:
                yield from after_frame(i)

    return (yield from inner())


def labdct_scan(detector, rotation, start: float = -180.0, stop: float = 180.0,
                step: float = 2.0, exposure: float | None = None, md: dict | None = None):
    """A LabDCT rotation scan: one frame per omega from ``start`` to ``stop``.

    Parameters
    ----------
    detector : LabDCTDetector, or a device with an ``exposure`` signal (s) and an ``image``
        signal whose name is the image's data key (else give ``image_key`` in ``md``)
    rotation : positioner (degrees)
    start, stop, step : float
        Rotation angles (degrees); ``stop`` is included when a whole number of steps away,
        so the defaults give the paper's 181 projections.
    exposure : float or None
        Exposure time (s); the detector's current one when None.
    md : dict, optional
        Extra start-document metadata (overrides the plan's keys).

    Returns
    -------
    generator
        The plan (arguments are checked now, not when the RunEngine starts it); it yields
        ``Msg`` objects and returns the run's uid.

    Examples
    --------
    >>> (uid,) = RE(labdct_scan(det, rotation, start=0, stop=10, step=2, exposure=1.5))
    >>> rotation.position, det.exposure.get()
    (10.0, 1.5)
    """
    omegas = scan_omegas(start, stop, step)
    exposure = _positive(
        "exposure", detector.exposure.get() if exposure is None else exposure)
    plan_args = {"detector": repr(detector), "rotation": repr(rotation), "start": start,
                 "stop": stop, "step": step, "exposure": exposure}
    meta = _start_metadata("labdct_scan", detector, rotation, omegas, exposure, plan_args, md)
    return _rotation_scan(detector, rotation, omegas, exposure, meta)


def adaptive_exposure_scan(detector, rotation, snr_source: Callable[[], float | None],
                           target_snr: float, start: float = -180.0, stop: float = 180.0,
                           step: float = 2.0, exposure: float | None = None,
                           min_exposure: float | None = None, max_exposure: float | None = None,
                           damping: float = 0.5, max_factor: float = 4.0,
                           md: dict | None = None):
    """A rotation scan that raises or lowers the exposure between frames toward a target SNR.

    After each frame, ``snr_source()`` gives the latest frame's mean spot SNR (the live
    monitor's result; it runs synchronously inside ``trigger_and_read`` when subscribed in
    this process) and :func:`next_exposure` sets the exposure of the next frame. Each
    event records the exposure its frame was taken with (the detector's ``exposure`` signal).

    Parameters
    ----------
    detector, rotation, start, stop, step, md
        As :func:`labdct_scan`.
    snr_source : callable
        ``snr_source() -> float | None``: mean spot SNR of the latest processed frame, or
        None when there is none yet.
    target_snr : float
        Wanted mean spot SNR (> 0).
    exposure : float or None
        First frame's exposure (s); the detector's current one when None.
    min_exposure, max_exposure : float or None
        Exposure bounds (s); ``exposure / 16`` and ``exposure * 16`` when None.
    damping, max_factor : float
        See :func:`next_exposure`.

    Examples
    --------
    In a session the SNR source is the live monitor's ``monitor.latest_snr``; here a
    stand-in with SNR = 2 √exposure, so the target SNR 8 needs (8 / 2)² = 16 s:

    >>> snr_source = lambda: 2.0 * det.exposure.get() ** 0.5
    >>> (uid,) = RE(adaptive_exposure_scan(det, rotation, snr_source, target_snr=8, start=0,
    ...                                    stop=20, step=2, exposure=1.0, max_exposure=20))
    >>> round(det.exposure.get())
    16
    """
    if not callable(snr_source):
        raise PlanError(f"snr_source must be a callable returning the latest SNR, got "
                        f"{snr_source!r}")
    target_snr = _positive("target_snr", target_snr, "number")
    if not (0 < damping <= 1):
        raise PlanError(f"damping must be in (0, 1], got {damping!r}")
    if not max_factor > 1:
        raise PlanError(f"max_factor must be > 1, got {max_factor!r}")
    omegas = scan_omegas(start, stop, step)
    exposure = _positive(
        "exposure", detector.exposure.get() if exposure is None else exposure)
    min_exposure = _positive(
        "min_exposure", exposure / 16 if min_exposure is None else min_exposure)
    max_exposure = _positive(
        "max_exposure", exposure * 16 if max_exposure is None else max_exposure)
    if not min_exposure <= exposure <= max_exposure:
        raise PlanError(f"exposure {exposure} s must lie in [min_exposure, max_exposure] = "
                        f"[{min_exposure}, {max_exposure}] s")
    plan_args = {"detector": repr(detector), "rotation": repr(rotation),
                 "snr_source": repr(snr_source), "target_snr": target_snr, "start": start,
                 "stop": stop, "step": step, "exposure": exposure,
                 "min_exposure": min_exposure, "max_exposure": max_exposure,
                 "damping": damping, "max_factor": max_factor}
    meta = _start_metadata("adaptive_exposure_scan", detector, rotation, omegas, exposure,
                           plan_args, {"target_snr": target_snr,
                                       "min_exposure": min_exposure,
                                       "max_exposure": max_exposure, "damping": damping,
                                       **(md or {})})

    def adapt(i: int):
        current = float(detector.exposure.get())
        try:
            snr = snr_source()
            snr = None if snr is None else float(snr)
        except Exception:  # a failing monitor must not abort the scan: keep the exposure
            logger.exception("snr_source failed after frame %d; exposure unchanged", i)
            snr = None
        new = next_exposure(current, snr, target_snr, min_exposure, max_exposure, damping,
                            max_factor)
        if new != current:
            logger.info("frame %d: SNR %s at %.4g s -> exposure %.4g s (target SNR %g)",
                        i, "none" if snr is None else f"{snr:.3g}", current, new, target_snr)
            yield from bps.mv(detector.exposure, new)

    return _rotation_scan(detector, rotation, omegas, exposure, meta, after_frame=adapt)


def coarse_first_order(n: int, stride: int = 8) -> np.ndarray:
    """Frame indices ``0..n-1`` in a coarse-first order: every ``stride``-th frame first,
    then the frames halfway between, and so on, so that the ω range is covered early.

    Examples
    --------
    >>> coarse_first_order(9, 4).tolist()
    [0, 4, 8, 2, 6, 1, 3, 5, 7]
    """
    if n < 0 or stride < 1:
        raise PlanError(f"need n >= 0 and stride >= 1, got n={n}, stride={stride}")
    order: list[int] = []
    seen = np.zeros(n, dtype=bool)
    step = int(stride)
    while step >= 1:
        new = [i for i in range(0, n, step) if not seen[i]]
        seen[new] = True
        order += new
        step //= 2
    return np.asarray(order, dtype=np.int64)


def quality_scan(detector, rotation, quality_source: Callable[[], object | None],
                 start: float = -180.0, stop: float = 180.0, step: float = 2.0,
                 exposure: float | None = None, order: str = "coarse-first",
                 stride: int = 8, max_exposure: float | None = None, retake: bool = True,
                 md: dict | None = None):
    """A rotation scan driven by the live grain map's scan-quality signal.

    After each frame the plan reads ``quality_source()``, the newest
    :class:`~labdct_live.callbacks.scan_quality.ScanQuality` (``live_map.latest`` of a
    :class:`~labdct_live.callbacks.live_grainmap.LiveGrainMap`), and acts once on each new
    update's decision (docs/live-grainmap.md): ``enough`` ends the scan (the run closes
    normally, with the frames taken so far); ``raise exposure`` sets the exposure to the
    exposure monitor's advice (at most ``max_exposure``) and, with ``retake``, queues the
    frames taken at a shorter exposure again at the end (a reconstruction then uses the
    longest exposure at each ω); ``continue`` does nothing.

    Parameters
    ----------
    detector, rotation, start, stop, step, exposure, md
        As :func:`labdct_scan`.
    quality_source : callable
        ``quality_source() -> ScanQuality | None``.
    order : {"coarse-first", "sequential"}
        Acquisition order of the ω (:func:`coarse_first_order` with ``stride``, or as
        given): coarse-first makes the live map usable early.
    stride : int
        First-pass spacing of the coarse-first order, in frames.
    max_exposure : float or None
        Longest exposure a ``raise exposure`` may set (s); 16 times the first when None.
    retake : bool
        Re-take the frames of shorter exposure after a raise.

    Examples
    --------
    A stand-in for the live map that says ``enough`` from the third frame on:

    >>> from types import SimpleNamespace
    >>> frames = []
    >>> def quality():
    ...     return SimpleNamespace(update=len(frames), decision="enough" if len(frames) >= 3
    ...                            else "continue", advised_exposure=None)
    >>> _ = RE.subscribe(lambda name, doc: frames.append(doc) if name == "event" else None)
    >>> (uid,) = RE(quality_scan(det, rotation, quality, start=0, stop=20, step=2,
    ...                          exposure=1.0, stride=4))
    >>> [doc["data"]["rotation"] for doc in frames]
    [0.0, 8.0, 16.0]
    """
    if not callable(quality_source):
        raise PlanError(f"quality_source must be a callable returning the latest scan "
                        f"quality, got {quality_source!r}")
    if order not in ("coarse-first", "sequential"):
        raise PlanError(f"order must be 'coarse-first' or 'sequential', got {order!r}")
    omegas = scan_omegas(start, stop, step)
    exposure = _positive(
        "exposure", detector.exposure.get() if exposure is None else exposure)
    max_exposure = _positive(
        "max_exposure", 16 * exposure if max_exposure is None else max_exposure)
    sequence = (coarse_first_order(len(omegas), stride) if order == "coarse-first"
                else np.arange(len(omegas)))
    plan_args = {"detector": repr(detector), "rotation": repr(rotation),
                 "quality_source": repr(quality_source), "start": start, "stop": stop,
                 "step": step, "exposure": exposure, "order": order, "stride": stride,
                 "max_exposure": max_exposure, "retake": retake}
    meta = _start_metadata("quality_scan", detector, rotation, omegas, exposure, plan_args,
                           {"omega_order": order, "max_exposure": max_exposure, **(md or {})})

    @bpp.stage_decorator([detector, rotation])
    @bpp.run_decorator(md=meta)
    def inner():
        yield from bps.mv(detector.exposure, exposure)
        queue = [int(i) for i in sequence]
        taken: list[tuple[int, float]] = []
        seen_update = None
        while queue:
            i = queue.pop(0)
            yield from bps.checkpoint()
            yield from bps.mv(rotation, float(omegas[i]))
            yield from bps.trigger_and_read([detector, rotation])
            current = float(detector.exposure.get())
            taken.append((i, current))
            try:
                quality = quality_source()
            except Exception:  # a failing live map must not abort the scan
                logger.exception("quality_source failed after frame %d", len(taken) - 1)
                quality = None
            if quality is None or quality.update == seen_update:
                continue
            seen_update = quality.update
            if quality.decision == "enough":
                logger.info("scan quality: enough after %d frames (update %s): %s",
                            len(taken), quality.update, getattr(quality, "reason", ""))
                break
            advised = getattr(quality, "advised_exposure", None)
            if quality.decision == "raise exposure" and current < max_exposure:
                new = float(min(max_exposure, max(advised or 0.0, 1.5 * current)))
                logger.info("scan quality: exposure %.4g s -> %.4g s after %d frames", current,
                            new, len(taken))
                yield from bps.mv(detector.exposure, new)
                if retake:
                    queue += [j for j, t in taken if t < new and j not in queue]

    return inner()
