"""Segmentations of the real iron frames scored without ground truth (docs/real-frames.md).

The frames are the public far-field LabDCT scan of pure iron (github.com/YubinZhang/
Indexing_ff_LabDCT_DBB, folder ``FF_LabDCT_pure_iron/``). They have no licence: keep them
local and commit nothing derived from them but aggregate numbers. The folder is read from
``LABDCT_REAL_DATA``; without it the script says so and exits 0.

For each segmentation it reports spots per frame, Friedel-consistent spots per frame (net of
the control mirror) and their share (:mod:`labdct_live.segmentation.consistency`), plus
static spots and the net recurrence over neighbouring ω:

- ``dl``: the shipped U-Net with ``segment --method dl`` defaults (no beam stop);
- ``routine``: the standard routine with ``segment --method routine`` defaults;
- ``threshold T``: one global threshold on the frame minus the per-pixel stack median, beam
  stop excluded, components of at least ``--min-size`` pixels, for a sweep of T; the best
  by the consistent count is reported;
- with ``--model FILE`` (repeatable): that checkpoint, e.g. one made by ``labdct-live adapt``,
  with its own inference settings (static background, zinger rejection, threshold, min size,
  least contrast), once with the stack median as static background and once as ``segment``
  and the live plugin run it (rolling median of the previous frames);
- with ``--extra``: the U-Net with the instrument's beam stop, without its static spots, and
  fed the frame minus the stack median (plus the median level); the routine with a
  background constant suited to these frames (``--background 150 --sigma 1.5``).

Usage::

    LABDCT_REAL_DATA=/path/to/FF_LabDCT_pure_iron \\
        python benchmarks/real_frames.py [--extra] [--crops /tmp/real_crops] [--json FILE]

``--crops OUTDIR`` writes raw / raw-minus-median / U-Net / routine crops of a few frames as
PNG files (default folder /tmp/labdct_real_crops); never inside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from labdct_live.segmentation.consistency import fit_mirror_row, score_scan, static_map
from labdct_live.segmentation.friedel import (
    DEFAULT_CONTROL_SHIFT,
    DEFAULT_TOLERANCE,
    frame_spots,
    friedel_mirror,
    friedel_shift_bound,
)
from labdct_live.simulation.instrument import load_instrument

ROOT = Path(__file__).resolve().parents[1]
ENV = "LABDCT_REAL_DATA"
DEFAULT_INSTRUMENT = ROOT / "docs" / "examples" / "iron_ff_labdct.yaml"
PATTERN = "Iron_sample_tomo-B_Export*.tiff"
THRESHOLDS = (40, 60, 80, 100, 120, 150, 200, 250, 300, 400)


def load_frames(folder: Path) -> np.ndarray:
    from labdct_live.io.frames import natural_key, read_frame

    files = sorted(folder.glob(PATTERN), key=lambda p: natural_key(p.name))
    if not files:
        raise SystemExit(f"{folder}: no {PATTERN} frames (is {ENV} the FF_LabDCT_pure_iron "
                         "folder?)")
    return np.stack([read_frame(f) for f in files])


def dl_masks(frames: np.ndarray, exclude: np.ndarray | None) -> list[np.ndarray]:
    from labdct_live.models.inference import DEFAULT_MIN_SIZE, Denoiser

    denoiser = Denoiser(None)
    return [denoiser.segment(f, denoiser.threshold, min_size=DEFAULT_MIN_SIZE,
                             exclude=exclude) > 0 for f in frames]


def model_masks(frames: np.ndarray, model: str, exclude: np.ndarray | None,
                median: np.ndarray | None) -> list[np.ndarray]:
    """Masks of a checkpoint through the ``dl`` method with the model's own settings."""
    from labdct_live.methods import DLMethod

    options = {} if median is None else {"static_background": median, "static_window": 0}
    method = DLMethod(model, exclude=exclude, **options)
    return [method.segment_frame(f)[0] > 0 for f in frames]


def drop_static(masks: list[np.ndarray], fraction: float = 0.9) -> list[np.ndarray]:
    """The masks without their static spots (mostly on pixels segmented in >= 90 % of frames)."""
    static = static_map(masks) >= fraction
    out = []
    for m in masks:
        spots = frame_spots(m, static)
        keep = np.concatenate([[False], ~spots.static])
        out.append(keep[spots.labels])
    return out


def routine_masks(frames: np.ndarray, exclude: np.ndarray | None, **changes
                  ) -> list[np.ndarray]:
    from labdct_live.segmentation.routine import RoutineParams, iter_standard_routine

    params = RoutineParams.preset("public-code").with_(**changes)
    out: list[np.ndarray | None] = [None] * len(frames)
    for result in iter_standard_routine(iter(frames), params, exclude, True):
        out[result.index] = result.mask > 0
    return out  # type: ignore[return-value]


def threshold_masks(residual: np.ndarray, threshold: float, exclude: np.ndarray,
                    min_size: int) -> list[np.ndarray]:
    from labdct_live.segmentation.threshold import remove_small_components

    out = []
    for r in residual:
        m = r > threshold
        m[exclude] = False
        out.append(remove_small_components(m, min_size)[0])
    return out


def frame_statistics(frames: np.ndarray, median: np.ndarray, exclude: np.ndarray) -> dict:
    """Aggregate statistics of the real frames (no image)."""
    residual = frames[len(frames) // 2].astype(np.float32) - median
    sel = residual[~exclude]
    noise = float(1.4826 * np.median(np.abs(sel - np.median(sel))))
    near_full = frames >= 60000
    zinger_frames = [int(k) for k in np.nonzero(near_full.reshape(len(frames), -1).any(1))[0]]
    single = 0  # near-saturated pixels whose neighbours in omega are ordinary
    for k in zinger_frames:
        rows, cols = np.nonzero(near_full[k])
        prev = frames[k - 1, rows, cols] if k > 0 else frames[k + 1, rows, cols]
        nxt = frames[k + 1, rows, cols] if k + 1 < len(frames) else prev
        single += int(np.count_nonzero((prev < 5000) & (nxt < 5000)))
    return {
        "frames": int(len(frames)), "shape": list(frames.shape[1:]),
        "dtype": str(frames.dtype),
        "median_level": float(np.median(frames[:, ~exclude])),
        "p99_9": float(np.percentile(frames[len(frames) // 2][~exclude], 99.9)),
        "max": int(frames.max()),
        "noise_sd_residual": noise,
        "near_saturated_pixels": int(near_full.sum()),
        "frames_with_near_saturated_pixels": len(zinger_frames),
        "single_frame_near_saturated_pixels": single,
    }


def score(name: str, masks: list[np.ndarray], omegas: np.ndarray, mirror, exclude,
          tolerance: float, control_shift: float) -> dict:
    t = time.perf_counter()
    result = score_scan(masks, omegas, mirror, tolerance=tolerance,
                        control_shift=control_shift, exclude=exclude)
    s = result.summary
    sizes = np.concatenate([frame_spots(m).sizes for m in masks[::10]]) if masks else [0]
    row = {"segmentation": name, "spots_per_frame": s.spots_per_frame,
           "consistent_per_frame": s.consistent_per_frame, "share": s.share,
           "static_spots_per_frame": s.static_spots_per_frame, "static_pixels": s.static_pixels,
           "net_recurrence_share": s.recurrence_share,
           "median_spot_px": float(np.median(sizes)) if len(sizes) else 0.0}
    print(f"  {name}: {s.spots_per_frame:.0f} spots/frame, {s.consistent_per_frame:.0f} "
          f"consistent, share {s.share:.3f}, static spots {s.static_spots_per_frame:.0f} "
          f"({time.perf_counter() - t:.0f} s)", flush=True)
    return row


def _table(rows: list[dict]) -> str:
    cols = ["segmentation", "spots_per_frame", "consistent_per_frame", "share",
            "static_spots_per_frame", "static_pixels", "net_recurrence_share", "median_spot_px"]
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)
    body = []
    for r in rows:
        cells = [r[c] if isinstance(r[c], str) else
                 (f"{r[c]:.3f}" if c in ("share", "net_recurrence_share") else f"{r[c]:.0f}")
                 for c in cols]
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, *body])


def write_crops(outdir: Path, frames, median, dl, routine, best, exclude) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir = outdir.resolve()
    if outdir == ROOT or ROOT in outdir.parents:
        raise SystemExit(f"--crops {outdir} lies in the repository: images derived from the "
                         "real frames must not be committed; choose a folder outside it")
    outdir.mkdir(parents=True, exist_ok=True)
    regions = {"beamstop": (380, 380), "upper": (100, 700), "lower_left": (650, 200)}
    for k in (10, 70):
        for name, (r, c) in regions.items():
            sl = (slice(r, r + 256), slice(c, c + 256))
            raw = frames[k][sl].astype(float)
            panels = [("raw", raw, "gray", np.percentile(raw, [1, 99.7])),
                      ("raw - stack median", raw - median[sl], "gray", (-60, 200)),
                      ("U-Net (dl defaults)", dl[k][sl], "viridis", (0, 1)),
                      ("routine (defaults)", routine[k][sl], "viridis", (0, 1)),
                      ("best threshold", best[k][sl], "viridis", (0, 1))]
            fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.3))
            for ax, (title, image, cmap, (lo, hi)) in zip(axes, panels):
                ax.imshow(image, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
                ax.set_title(title)
                ax.set_xticks([])
                ax.set_yticks([])
            fig.suptitle(f"frame {k + 1}, rows {r}-{r + 255}, cols {c}-{c + 255}")
            fig.tight_layout()
            fig.savefig(outdir / f"frame{k + 1:04d}_{name}.png", dpi=70)
            plt.close(fig)
    print(f"crops: {outdir}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instrument", default=str(DEFAULT_INSTRUMENT))
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    p.add_argument("--control-shift", type=float, default=DEFAULT_CONTROL_SHIFT)
    p.add_argument("--min-size", type=int, default=3,
                   help="minimum component size of the threshold masks, pixels (default 3)")
    p.add_argument("--extra", action="store_true",
                   help="also the U-Net with the beam stop and the routine with background 150")
    p.add_argument("--crops", nargs="?", const="/tmp/labdct_real_crops", default=None,
                   metavar="OUTDIR", help="write PNG crops there (default /tmp/labdct_real_crops)")
    p.add_argument("--model", action="append", default=[], metavar="FILE",
                   help="also score this checkpoint with its own inference settings "
                        "(repeatable)")
    p.add_argument("--models-only", action="store_true",
                   help="score only the --model checkpoints (no sweep, shipped model, routine)")
    p.add_argument("--json", default=None, help="write the results as JSON (outside the repo)")
    args = p.parse_args(argv)

    folder = os.environ.get(ENV)
    if not folder or not Path(folder).is_dir():
        print(f"skipped: set {ENV} to the FF_LabDCT_pure_iron folder of "
              "github.com/YubinZhang/Indexing_ff_LabDCT_DBB (frames are not shipped)")
        return 0
    instrument = load_instrument(args.instrument)
    exclude = instrument.beamstop_mask()
    frames = load_frames(Path(folder))
    if frames.shape[1:] != instrument.geometry.detector_shape or len(frames) != len(
            instrument.omegas):
        raise SystemExit(f"{folder}: {len(frames)} frames of {frames.shape[1:]} do not match "
                         f"{args.instrument}")
    omegas = instrument.omegas
    mirror = friedel_mirror(instrument.geometry)
    t0 = time.perf_counter()
    median = np.median(frames, axis=0).astype(np.float32)
    residual = frames.astype(np.float32) - median
    stats = frame_statistics(frames, median, exclude)
    stats["friedel_shift_bound_px"] = {
        f"radius {r} mm": friedel_shift_bound(instrument.geometry, r) for r in (0.1, 0.25, 0.5)}
    print(json.dumps(stats, indent=1))

    rows = []
    if args.models_only:
        for path in args.model:
            name = Path(path).parent.name + "/" + Path(path).name
            rows.append(score(f"dl, {name}, stack median",
                              model_masks(frames, path, exclude, median), omegas, mirror,
                              exclude, args.tolerance, args.control_shift))
            rows.append(score(f"dl, {name}, rolling median (segment, live)",
                              model_masks(frames, path, exclude, None), omegas, mirror,
                              exclude, args.tolerance, args.control_shift))
        print(_table(rows))
        if args.json:
            Path(args.json).write_text(json.dumps({"stats": stats, "table": rows}, indent=1))
        return 0
    print("threshold sweep (frame minus stack median):", flush=True)
    sweep = []
    for thr in THRESHOLDS:
        masks = threshold_masks(residual, thr, exclude, args.min_size)
        sweep.append((score(f"threshold {thr}", masks, omegas, mirror, exclude,
                            args.tolerance, args.control_shift), thr))
    best_row, best_thr = max(sweep, key=lambda s: s[0]["consistent_per_frame"])
    best = threshold_masks(residual, best_thr, exclude, args.min_size)
    spots = [frame_spots(m).without_labels() for m in best]
    fitted_row, fitted_count = fit_mirror_row(spots, omegas, instrument.beam_center[0],
                                              tolerance=args.tolerance,
                                              control_shift=args.control_shift, exclude=exclude)
    stats["fitted_mirror_row"] = {"row": fitted_row, "consistent_per_frame": fitted_count}
    tol_sweep = {}
    for tol in (2, 3, 4, 6, 8, 12, 16):
        r = score_scan(best, omegas, mirror, tolerance=tol,
                       control_shift=max(args.control_shift, 3 * tol), exclude=exclude).summary
        tol_sweep[tol] = {"consistent_per_frame": r.consistent_per_frame, "share": r.share}
    stats["tolerance_sweep_best_threshold"] = tol_sweep
    del residual

    print("U-Net (segment --method dl defaults):", flush=True)
    dl = dl_masks(frames, None)
    rows.append(score("`segment --method dl` (shipped model, defaults)", dl, omegas, mirror,
                      exclude, args.tolerance, args.control_shift))
    print("routine (segment --method routine defaults):", flush=True)
    routine = routine_masks(frames, None)
    rows.append(score("`segment --method routine` (defaults)", routine, omegas, mirror,
                      exclude, args.tolerance, args.control_shift))
    for path in args.model:
        name = Path(path).parent.name + "/" + Path(path).name
        print(f"{name}:", flush=True)
        rows.append(score(f"dl, {name}, stack median", model_masks(frames, path, exclude, median),
                          omegas, mirror, exclude, args.tolerance, args.control_shift))
        rows.append(score(f"dl, {name}, rolling median (segment, live)",
                          model_masks(frames, path, exclude, None), omegas, mirror, exclude,
                          args.tolerance, args.control_shift))
    if args.extra:
        rows.append(score("dl, with the beam stop", dl_masks(frames, exclude), omegas, mirror,
                          exclude, args.tolerance, args.control_shift))
        rows.append(score("dl defaults, static spots dropped", drop_static(dl), omegas, mirror,
                          exclude, args.tolerance, args.control_shift))
        flat = np.clip(frames.astype(np.float32) - median + float(np.median(median)), 0, None)
        rows.append(score("dl on frame - stack median + median level, beam stop",
                          dl_masks(flat, exclude), omegas, mirror, exclude, args.tolerance,
                          args.control_shift))
        del flat
        rows.append(score("routine, --background 150 --sigma 1.5, beam stop",
                          routine_masks(frames, exclude, background=150.0, sigma=1.5), omegas,
                          mirror, exclude, args.tolerance, args.control_shift))
    best_row = dict(best_row, segmentation=f"best global threshold on frame - stack median "
                                           f"(T = {best_thr}, min size {args.min_size})")
    rows.append(best_row)
    print()
    print(_table(rows))
    print()
    print("threshold sweep:")
    print(_table([s[0] for s in sweep]))
    print(f"\n{time.perf_counter() - t0:.0f} s")
    if args.crops:
        write_crops(Path(args.crops), frames, median, dl, routine, best, exclude)
    if args.json:
        Path(args.json).write_text(json.dumps({"stats": stats, "table": rows,
                                               "sweep": [s[0] for s in sweep]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
