"""Adapt the shipped U-Net to a user's instrument from its own unlabelled frames.

``labdct-live adapt FRAMES --instrument FILE --out MODEL`` (:func:`adapt`), on the CPU in a
time budget:

1. **Frames and instrument**: geometry, ω and material from the instrument file.
2. **Noise** of the detector from the frames
   (:func:`labdct_live.training.noise_model.estimate_noise`: photon transfer, hot/dead pixels,
   zingers) and the stack median (the scan's static background).
3. **Backgrounds** from the frames with their spots removed (Appendix A, in counts:
   :func:`labdct_live.training.instrument_data.count_backgrounds`).
4. **Spots** simulated in the user's geometry and material (a projection cache), composed
   with those backgrounds and that noise (:func:`~labdct_live.training.instrument_data.
   instrument_crops`), normalised and targeted as the shipped model was trained.
5. **Fine-tuning** from the shipped model with :func:`labdct_live.models.train.train`
   (checkpoints every ``val_every`` steps; ``resume=True`` continues), stopped at the
   validation after which the budget ``minutes`` (less the time the threshold sweep needs)
   is spent; the best weights by validation loss are kept.
6. **Threshold without labels**: on a subset of Friedel pairs of the user's frames, the
   threshold, smallest spot size and least spot contrast (peak above the static background,
   in noise SDs; ``static`` input only) that maximise the Friedel-consistent spots per frame
   among the choices with a share of at least ``min_share``
   (:mod:`labdct_live.segmentation.consistency`); when none reaches it, the choice that
   maximises consistent × share. The fine-tuned
   weights compete with the base weights (fed the same way) in that choice, so the adapted
   checkpoint never scores below the base model on those frames; ``weights`` says which won.
7. **Provenance** in the checkpoint: frames, settings, noise model, the score of the shipped
   model before and of the adapted one after; the range of the inputs it was tuned on
   (synthetic and the scan's own, for :class:`~labdct_live.models.domain.DomainCheck`); the
   static background (stack median) when the network is fed the frame minus it
   (``inference.input == "static"``), which the ``dl`` method applies by itself.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labdct_live.models.checkpoint import load_model, save_checkpoint
from labdct_live.models.data import ChunkedBatches, _batched
from labdct_live.models.domain import domain_ranges
from labdct_live.models.inference import DEFAULT_MIN_SIZE, Denoiser
from labdct_live.models.pretrained import load_pretrained
from labdct_live.models.train import TrainConfig, train
from labdct_live.segmentation.scan_filters import drop_faint, reject_zingers
from labdct_live.segmentation.threshold import threshold_segment
from labdct_live.simulation.microstructure import SampleSpec
from labdct_live.training.acquisitions import Acquisition
from labdct_live.training.cache import ProjectionCache, build_projection_cache
from labdct_live.training.crops import CropSettings
from labdct_live.training.instrument_data import (
    InstrumentSynthesis,
    count_backgrounds,
    instrument_crops,
)
from labdct_live.training.noise_model import NoiseModel, estimate_noise, stack_median
from labdct_live.training.torchdata import split_projections

__all__ = ["AdaptSettings", "adapt", "choose_threshold", "score_subset"]

logger = logging.getLogger(__name__)

#: Thresholds tried on the U-Net output.
THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
#: Smallest spot sizes (pixels) tried with them.
MIN_SIZES = (2, 4, 8)
#: Least spot peaks above the static background tried with them, in noise SDs (static only).
CONTRASTS = (0.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)


@dataclass(frozen=True)
class AdaptSettings:
    """Settings of :func:`adapt` (all stored in the checkpoint).

    ``minutes`` bounds the whole command, and training takes at most ``max_steps`` steps:
    longer fine-tuning on synthetic pairs drifted away from real frames (docs/adapt.md);
    ``steps`` (when set) fixes the training steps instead. ``input``: ``"static"`` feeds the
    network the frame minus the stack median, ``"raw"`` the frame itself.
    """

    minutes: float = 25.0
    steps: int | None = None
    max_steps: int = 250
    input: str = "static"
    projections: int = 24
    sample_diameter_mm: float | None = None
    grain_size_mm: float = 0.05
    crop: int = 256
    batch_size: int = 8
    lr: float = 3e-4
    val_every: int = 50
    val_batches: int = 4
    noise_frames: int = 40
    background_window: int = 60
    score_pairs: int = 6
    min_share: float = 0.5
    min_sizes: tuple[int, ...] = MIN_SIZES
    contrasts: tuple[float, ...] = CONTRASTS
    zinger_k: float = 20.0
    median_snr_range: tuple[float, float] = (0.7, 6.0)
    seed: int = 0
    threads: int | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["median_snr_range"] = list(self.median_snr_range)
        d["min_sizes"] = list(self.min_sizes)
        d["contrasts"] = list(self.contrasts)
        return d


def _subset_pairs(omegas: np.ndarray, n_pairs: int) -> list[int]:
    from labdct_live.segmentation.friedel import friedel_pairs

    pairs = friedel_pairs(omegas)
    if not pairs:
        return []
    chosen = np.unique(np.linspace(0, len(pairs) - 1, min(n_pairs, len(pairs))).round()
                       .astype(int))
    return sorted({k for p in chosen for k in pairs[int(p)]})


def score_subset(masks: Sequence[np.ndarray], omegas: Sequence[float], geometry,
                 exclude: np.ndarray | None) -> dict:
    """Friedel score of the masks of a subset of frames, as
    :func:`labdct_live.segmentation.consistency.score_scan` counts it (static spots left out,
    control mirror subtracted) without its recurrence part: ``spots_per_frame``,
    ``consistent_per_frame``, ``share``, ``static_spots_per_frame``."""
    from labdct_live.segmentation.friedel import (
        STATIC_FRACTION,
        frame_spots,
        friedel_match,
        friedel_mirror,
        friedel_pairs,
    )

    masks = [np.asarray(m) > 0 for m in masks]
    static = np.mean(masks, axis=0) >= STATIC_FRACTION
    spots = [frame_spots(m, static).without_labels() for m in masks]
    mirror = friedel_mirror(geometry)
    matches: dict[int, list] = {}
    for i, j in friedel_pairs(np.asarray(omegas)):
        matches.setdefault(i, []).append(friedel_match(spots[i], spots[j], mirror,
                                                       exclude=exclude))
        matches.setdefault(j, []).append(friedel_match(spots[j], spots[i], mirror,
                                                       exclude=exclude))
    paired = sorted(matches)
    consistent = [float(np.mean([m.consistent for m in matches[k]])) for k in paired]
    n_paired = sum(len(spots[k]) for k in paired)
    return {"spots_per_frame": float(np.mean([len(s) for s in spots])),
            "consistent_per_frame": float(np.mean(consistent)) if consistent else 0.0,
            "share": float(sum(consistent) / n_paired) if n_paired else 0.0,
            "static_spots_per_frame": float(np.mean([s.static.sum() for s in spots]))}


def choose_threshold(scores: dict, min_share: float = 0.5) -> tuple[Any, str]:
    """The key (threshold, or (threshold, min size)) chosen by the rule of the module
    docstring from ``{key: score}``, and which branch of the rule chose it."""
    if not scores:
        raise ValueError("no thresholds were scored")
    ok = {t: s for t, s in scores.items() if s["share"] >= min_share}
    if ok:
        return max(ok, key=lambda t: (ok[t]["consistent_per_frame"], t)), (
            f"most consistent spots with share >= {min_share}")
    return max(scores, key=lambda t: scores[t]["consistent_per_frame"] * scores[t]["share"]), (
        f"no threshold reached share {min_share}: largest consistent x share")


def _denoise_subset(model, frames: Sequence[np.ndarray], static: np.ndarray | None,
                    zinger_threshold: float, threads: int | None
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(network input, denoised)`` of each frame."""
    denoiser = Denoiser(model, device="cpu", threads=threads)
    out = []
    for frame in frames:
        x = frame
        if zinger_threshold > 0:
            x, _ = reject_zingers(x, zinger_threshold)
        if static is not None:
            x = np.asarray(x, np.float32) - static
        out.append((x, denoiser(x)))
    return out


def _sweep(denoised: list[tuple[np.ndarray, np.ndarray]], thresholds, omegas, geometry,
           exclude, min_sizes, contrasts=(0.0,)) -> dict[tuple[float, int, float], dict]:
    """Scores of every (threshold, min size, least contrast in counts)."""
    out = {}
    for t in thresholds:
        for m in min_sizes:
            masks = [threshold_segment(d, t, int(m), exclude) for _, d in denoised]
            for c in contrasts:
                kept = [drop_faint(mask, x, c) for mask, (x, _) in zip(masks, denoised)]
                out[float(t), int(m), float(c)] = score_subset(kept, omegas, geometry, exclude)
    return out


def _step_seconds(model, batches, config: TrainConfig, n: int = 4, warmup: int = 3) -> float:
    """Seconds per training step (data included), measured on a copy of the model as
    :func:`~labdct_live.models.train.train` runs it (channels last), after ``warmup`` steps
    (the first ones also fill the projection pool)."""
    import copy

    from labdct_live.models.losses import get_loss

    clone = copy.deepcopy(model).train()
    if config.channels_last:
        clone = clone.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(clone.parameters(), lr=config.lr)
    loss_fn = get_loss(config.loss)
    times = []
    for step in range(n + warmup):
        t0 = time.perf_counter()
        x, y = batches(step)
        x = torch.as_tensor(x)[:, None]
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.as_tensor(y, dtype=torch.float32)[:, None]
        loss, _ = loss_fn(clone(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[warmup:]))


def _print(message: str, progress: bool) -> None:
    """A line per stage, always printed (``progress`` only governs the bars)."""
    print(message, flush=True)


def adapt(frames: np.ndarray | Sequence[np.ndarray], instrument, out: str | os.PathLike, *,
          settings: AdaptSettings = AdaptSettings(), work_dir: str | os.PathLike | None = None,
          base_model: str | os.PathLike | None = None, resume: bool = False,
          frame_names: Sequence[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Fine-tune the shipped (or ``base_model``) U-Net to ``instrument`` from ``frames``.

    Parameters
    ----------
    frames : (n, H, W) array or sequence of frames
        The user's scan, in the order of ``instrument.omegas``.
    instrument : labdct_live.simulation.instrument.Instrument
    out : path
        The adapted checkpoint.
    settings : AdaptSettings
    work_dir : path, optional
        Caches and the training run (default ``OUT`` + ``.work``); reused by ``resume``.
    base_model : path, optional
        Checkpoint to start from (the shipped model when None).
    resume : bool
        Continue an interrupted run in ``work_dir``.
    frame_names : sequence of str, optional
        File names of the frames (provenance).
    progress : bool
        Progress bars and a line per stage.

    Returns
    -------
    dict
        The provenance stored in the checkpoint (``report``), plus ``out``.
    """
    t_start = time.perf_counter()
    out = Path(out)
    work = Path(work_dir) if work_dir is not None else out.with_name(out.name + ".work")
    n = len(frames)
    geometry = instrument.geometry
    shape = tuple(np.shape(frames[0]))
    if shape != tuple(geometry.detector_shape):
        raise ValueError(f"frames are {shape} but the instrument's detector is "
                         f"{tuple(geometry.detector_shape)}")
    if n != len(instrument.omegas):
        raise ValueError(f"{n} frames but the instrument lists {len(instrument.omegas)} angles")
    if settings.input not in ("raw", "static"):
        raise ValueError(f"input must be 'raw' or 'static', got {settings.input!r}")
    if work.exists() and not resume and (work / "run" / "last.pt").exists():
        raise FileExistsError(f"{work} holds an adaptation run: resume it (--resume) or remove "
                              "it")
    work.mkdir(parents=True, exist_ok=True)
    exclude = instrument.beamstop_mask()
    report: dict[str, Any] = {"kind": "adapt", "settings": settings.to_dict(),
                              "instrument": instrument.to_dict(), "frames": {
                                  "count": n, "shape": list(shape),
                                  "names": list(frame_names or [])}}
    timings: dict[str, float] = {}

    # 2. noise and the static background
    t = time.perf_counter()
    median = stack_median(frames)
    noise_file = work / "noise.json"
    if resume and noise_file.is_file():
        noise = NoiseModel.from_dict(json.loads(noise_file.read_text()))
    else:
        noise = estimate_noise(frames, exclude=exclude, median=median,
                               max_frames=settings.noise_frames, seed=settings.seed)
        noise_file.write_text(json.dumps(noise.to_dict(), indent=1))
    zinger_threshold = float(settings.zinger_k * noise.noise_at_median)
    report["noise_model"] = noise.to_dict()
    timings["noise"] = time.perf_counter() - t
    _print(f"noise: offset {noise.offset:.0f}, gain {noise.gain:.3g} counts/photon, read "
           f"noise {noise.read_noise:.1f}, SD {noise.noise_at_median:.1f} at the median "
           f"level; hot pixels {noise.hot_fraction:.2e}, zingers {noise.zinger_rate:.1f}/Mpx/"
           f"frame ({timings['noise']:.0f} s)", progress)

    # 3. backgrounds in counts
    t = time.perf_counter()
    bg_file = work / "backgrounds.npy"
    if resume and bg_file.is_file():
        backgrounds = np.load(bg_file, allow_pickle=False)
    else:
        backgrounds = count_backgrounds(frames, exclude=exclude, median=median,
                                        window=min(settings.background_window, n),
                                        progress=progress)
        np.save(bg_file, backgrounds, allow_pickle=False)
    timings["backgrounds"] = time.perf_counter() - t
    _print(f"backgrounds: {len(backgrounds)} from the frames ({timings['backgrounds']:.0f} s)",
           progress)

    # 4. spots in the user's geometry
    t = time.perf_counter()
    diameter = settings.sample_diameter_mm or (
        2 * instrument.sample_radius_mm if instrument.sample_radius_mm else 0.4)
    spec = SampleSpec(instrument.material, diameter,
                      instrument.sample_height_mm or diameter, n_grains=None,
                      mean_grain_size=min(settings.grain_size_mm, diameter),
                      name="user-sample")
    acq = Acquisition("user", spec, geometry, int(settings.seed) + 1)
    if (work / "projections" / "index.json").is_file():  # complete: reuse
        cache = ProjectionCache(work / "projections")
    else:  # new, or resumes an interrupted build
        cache = build_projection_cache(work / "projections", [acq], settings.projections,
                                       seed=settings.seed, progress=progress)
    timings["projections"] = time.perf_counter() - t
    _print(f"projections: {len(cache)} simulated in the instrument's geometry "
           f"({timings['projections']:.0f} s)", progress)

    # 6a. the score before, on a subset of Friedel pairs
    t = time.perf_counter()
    subset = _subset_pairs(instrument.omegas, settings.score_pairs)
    sub_frames = [np.asarray(frames[k]) for k in subset]
    sub_omegas = instrument.omegas[subset] if subset else np.array([])
    base = load_model(base_model) if base_model is not None else load_pretrained()
    base_threshold = float((base.metadata.get("inference") or {}).get("threshold", 0.5))
    before = None
    if subset:
        denoised = _denoise_subset(base, sub_frames, None, 0.0, settings.threads)
        timings["denoise_subset"] = time.perf_counter() - t
        before = _sweep(denoised, [base_threshold], sub_omegas, geometry, exclude,
                        [DEFAULT_MIN_SIZE])[base_threshold, DEFAULT_MIN_SIZE, 0.0]
        before.update(threshold=base_threshold, min_size=DEFAULT_MIN_SIZE)
        _print(f"score before (base model, threshold {base_threshold}): "
               f"{before['spots_per_frame']:.0f} spots/frame, "
               f"{before['consistent_per_frame']:.1f} Friedel-consistent, share "
               f"{before['share']:.3f}", progress)
    else:
        logger.warning("no two frames are 180 degrees apart: the threshold cannot be chosen "
                       "by the Friedel score; the base model's is kept")
    timings["score_before"] = time.perf_counter() - t
    # what the sweep after training will cost: two denoisings of the subset and one score
    # per choice (thresholding and matching, ~ the score before less its denoising)
    one_score = max(timings["score_before"] - timings.get("denoise_subset", 0.0), 0.05)
    n_scores = 2 * len(THRESHOLDS) * len(settings.min_sizes) * (
        len(settings.contrasts) if settings.input == "static" else 1)
    reserve = 30.0 + 2.5 * timings.get("denoise_subset", 0.0) + 0.5 * n_scores * one_score

    # 5. fine-tuning
    static = median if settings.input == "static" else None
    synth = InstrumentSynthesis(median_snr_range=settings.median_snr_range,
                                input=settings.input)
    crop_size = min(settings.crop, *shape)
    crop_size -= crop_size % int(getattr(base, "input_multiple", 1))
    crops = CropSettings(size=crop_size)
    train_idx, val_idx = split_projections(cache, 0.15, settings.seed)

    def stream(chunk: int):
        rng = np.random.default_rng([settings.seed, 5, chunk])
        return _batched(instrument_crops(cache, backgrounds, noise, rng, settings=synth,
                                         crops=crops, projections=train_idx, exclude=exclude),
                        settings.batch_size)

    val_stream = _batched(instrument_crops(cache, backgrounds, noise,
                                           np.random.default_rng([settings.seed, 6]),
                                           settings=synth, crops=crops, projections=val_idx,
                                           exclude=exclude), settings.batch_size)
    validation = list(islice(val_stream, settings.val_batches))
    arch = base.architecture
    config = TrainConfig(model=arch["name"], model_config=dict(arch["config"]),
                         loss="mse+dice", steps=max(settings.val_every, 1), lr=settings.lr,
                         warmup_fraction=0.1, val_every=settings.val_every, patience=None,
                         threshold=base_threshold, seed=settings.seed, device="cpu")
    steps_file = work / "steps.json"
    if resume and steps_file.is_file() and (work / "run" / "last.pt").is_file():
        steps = int(json.loads(steps_file.read_text())["steps"])
        step_s = float(json.loads(steps_file.read_text())["step_seconds"])
    else:
        probe = ChunkedBatches(stream, settings.val_every)
        step_s = _step_seconds(base, probe, config)
        probe.close()
        if settings.steps is not None:
            steps = int(settings.steps)
        else:
            elapsed = time.perf_counter() - t_start
            # what remains after training: the threshold sweep (~ the score before per
            # threshold) and a margin
            budget = settings.minutes * 60.0 - elapsed - reserve
            # the probe runs cold (pool loading, thread start-up) and was measured to
            # over-estimate a step 4-8x on a busy machine: the schedule is laid out for
            # 8x its estimate and the deadline stops the run when the budget is spent
            steps = min(int(8 * budget / max(step_s, 1e-3)), settings.max_steps)
            steps = max(settings.val_every, steps - steps % settings.val_every)
        steps_file.write_text(json.dumps({"steps": steps, "step_seconds": step_s}))
    config = replace(config, steps=steps)
    _print(f"fine-tuning {arch['name']}: {steps} steps of {settings.batch_size} crops of "
           f"{crop_size}² (~{step_s:.2f} s per step)", progress)
    recipe = {"kind": "adapt", "input": settings.input, "synthesis": synth.to_dict(),
              "crops": asdict(crops), "projections": len(cache),
              "validation_projections": val_idx, "noise_model": noise.to_dict(),
              "backgrounds": int(len(backgrounds)), "batch_size": settings.batch_size,
              "seed": settings.seed}
    t = time.perf_counter()
    train_data = ChunkedBatches(stream, settings.val_every, prefetch=2)
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(int(settings.threads))
    try:
        deadline = None
        if settings.steps is None:
            deadline = time.monotonic() + settings.minutes * 60.0 - reserve - (
                time.perf_counter() - t_start)
        result = train(base, train_data, validation, config, work / "run",
                       resume=resume and (work / "run" / "last.pt").is_file(),
                       data_recipe=recipe, progress=progress, deadline=deadline)
    finally:
        torch.set_num_threads(threads)
    timings["training"] = time.perf_counter() - t
    adapted = load_model(result["paths"]["model.pt"])
    domain = adapted.metadata.get("metrics", {}).get("input_domain")

    # 6b. weights, threshold, min size and contrast by the Friedel score: the fine-tuned
    # weights compete with the base weights fed the same way, so the score never drops
    t = time.perf_counter()
    chosen, min_size, contrast, weights = base_threshold, DEFAULT_MIN_SIZE, 0.0, "adapted"
    rule, after, sweep = "the base model's threshold (no Friedel pairs)", None, {}
    if subset:
        contrasts = ([c * noise.noise_at_median for c in settings.contrasts]
                     if static is not None else [0.0])
        fresh = load_model(base_model) if base_model is not None else load_pretrained()
        candidates = {"adapted": adapted, "base": fresh}
        for name, net in candidates.items():
            denoised = _denoise_subset(net, sub_frames, static, zinger_threshold,
                                       settings.threads)
            for key, value in _sweep(denoised, THRESHOLDS, sub_omegas, geometry, exclude,
                                     settings.min_sizes, contrasts).items():
                sweep[(name, *key)] = value
        # the scan's own inputs belong to the domain the model is now tuned for
        domain = domain_ranges([x for x, _ in denoised], 0, 100, include=domain)
        (weights, chosen, min_size, contrast), rule = choose_threshold(sweep, settings.min_share)
        after = dict(sweep[weights, chosen, min_size, contrast], weights=weights,
                     threshold=chosen, min_size=min_size, min_contrast=contrast)
        adapted = candidates[weights]
        _print(f"score after ({weights} weights, threshold {chosen}, min size {min_size}, "
               f"least contrast {contrast:.0f} counts: {rule}): "
               f"{after['spots_per_frame']:.0f} spots/frame, "
               f"{after['consistent_per_frame']:.1f} Friedel-consistent, share "
               f"{after['share']:.3f}", progress)
    timings["score_after"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    report.update(score_frames=[int(k) for k in subset], score_before=before,
                  score_after=after, threshold_rule=rule,
                  weights=weights,
                  threshold_sweep=[{"weights": w, "threshold": t, "min_size": m,
                                    "min_contrast": c, **v}
                                   for (w, t, m, c), v in sweep.items()],
                  training={"steps": result["steps"], "step_seconds": step_s,
                            "best_metrics": result["best_metrics"]},
                  seconds=timings)
    inference: dict[str, Any] = {"threshold": float(chosen), "input": settings.input,
                                 "min_size": int(min_size), "min_contrast": float(contrast),
                                 "zinger_threshold": zinger_threshold}
    if static is not None:
        inference["static_background"] = torch.from_numpy(np.ascontiguousarray(static))
    save_checkpoint(out, adapted, training={**asdict(config), "steps_done": result["steps"],
                                            "base_model": str(base.metadata.get("file", "")),
                                            "base_sha256": str(base.metadata.get("sha256", ""))},
                    data=recipe, metrics={**result["best_metrics"], "adapt": report,
                                          "input_domain": domain},
                    inference=inference)
    _print(f"adapted model: {out} ({timings['total'] / 60:.1f} min)", progress)
    return {**report, "out": str(out)}
