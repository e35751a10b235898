"""F1 of the standard routine by SNR bin on held-out D35 frames, paper's vs tuned parameters.

    python benchmarks/validate_routine.py --out out/validate_routine

1. Tuning scan: D35 sample seed 1, 181 projections over 360° on the paper's 2032² detector,
   turned into noisy inputs by Eq. 1-2 (labdct_live.training.synthesis): one procedural background
   and one exposure for the whole scan (R_BG = I0 = 110, tau = 1, spot intensities scaled so
   that the median predicted spot SNR of the first frame is ``--median-snr``), independent
   noise in every frame. The rolling median runs over the whole scan; the four parameters
   are tuned (random search, F1) on ``--tune-frames`` evenly spaced frames.
2. Held-out scan: another D35 sample (seed 2), another background and noise seed, same
   exposure rule. Every ``--eval-every``-th frame is segmented with the public-code
   ("paper") parameters, the older public variant and the tuned parameters, and scored
   against the simulator's spot labels; SNRs are measured on the noisy frames (§8).

Writes OUT/report.md (tables, plots), OUT/tuned_params.json, OUT/tuning_trials.csv and
prints the tables and the time per frame.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from labdct_live.segmentation.metrics import DEFAULT_SNR_BINS, evaluate_frames
from labdct_live.segmentation.report import markdown_table, summary_table, write_report
from labdct_live.segmentation.rolling_median import RollingMedianSubtractor
from labdct_live.segmentation.routine import RoutineParams, segment_corrected
from labdct_live.segmentation.tune import tune_routine
from labdct_live.simulation.background import background_for_geometry
from labdct_live.simulation.forward import Simulator
from labdct_live.simulation.microstructure import make_sample
from labdct_live.simulation.presets import preset
from labdct_live.training.synthesis import scale_for_median_snr, spot_statistics, synthesize_input

I0 = 110.0


def d35_geometry(size: int, projections: int):
    spec, geometry = preset("D35")
    changes = {"n_projections": projections, "omega_step": 360.0 / (projections - 1)}
    if size != geometry.detector_shape[0]:  # binned detector, same field of view
        changes.update(detector_shape=(size, size),
                       pixel_size=geometry.pixel_size * geometry.detector_shape[0] / size)
    return spec, geometry.with_(**changes)


def noisy_scan(spec, geometry, sample_seed: int, noise_seed: int, median_snr: float):
    """Yield ``(index, noisy uint16 frame, truth labels)`` for every projection."""
    sim = Simulator(make_sample(spec, seed=sample_seed), geometry)
    background = background_for_geometry(geometry, noise_seed).render()
    rng = np.random.default_rng(noise_seed)
    scale = None
    rows, cols = geometry.detector_shape
    with ThreadPoolExecutor(max_workers=2) as pool:  # the simulator's kernels release the GIL
        for i, proj in enumerate(pool.map(sim.project, geometry.omegas)):
            if scale is None:
                stats = spot_statistics(proj.clean, proj.labels)
                at = (np.clip(np.rint(stats["row"]).astype(int), 0, rows - 1),
                      np.clip(np.rint(stats["col"]).astype(int), 0, cols - 1))
                scale = scale_for_median_snr(median_snr, stats["mean"], background[at], I0, 1.0)
            x, _ = synthesize_input(proj.clean, background, scale=scale, r_bg=I0, rng=rng)
            yield i, np.clip(np.rint(x), 0, 65535).astype(np.uint16), proj.labels


def evenly_spaced(n: int, k: int) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, k + 2)[1:-1].round().astype(int).tolist()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/validate_routine", help="report folder")
    parser.add_argument("--size", type=int, default=2032, help="detector side (binned if < 2032)")
    parser.add_argument("--projections", type=int, default=181)
    parser.add_argument("--median-snr", type=float, default=2.5,
                        help="median predicted spot SNR of the first frame (sets the exposure)")
    parser.add_argument("--tune-frames", type=int, default=8)
    parser.add_argument("--trials", type=int, default=80, help="random-search trials")
    parser.add_argument("--eval-every", type=int, default=6)
    args = parser.parse_args()
    command = "python " + shlex.join(sys.argv)
    spec, geometry = d35_geometry(args.size, args.projections)
    exclude = geometry.beamstop_mask()
    n = geometry.n_projections

    # ------------------------------------------------------------------ tuning scan
    tune_at = evenly_spaced(n, args.tune_frames)
    corrected, truth = {}, {}
    median = RollingMedianSubtractor(11, circular=True, exclude=exclude)
    t0 = time.perf_counter()
    for i, frame, labels in tqdm(noisy_scan(spec, geometry, 1, 101, args.median_snr), total=n,
                                 desc="tuning scan", unit="frame"):
        if i in tune_at:
            truth[i] = labels
        corrected.update((j, c) for j, c in median.push(frame) if j in tune_at)
    corrected.update((j, c) for j, c in median.finish() if j in tune_at)
    print(f"tuning scan: {n} frames in {time.perf_counter() - t0:.0f} s; tuning on {tune_at}")
    t0 = time.perf_counter()
    tuned = tune_routine(np.stack([corrected[i] for i in tune_at]),
                         np.stack([truth[i] for i in tune_at]), n_trials=args.trials,
                         exclude=exclude, seed=0)
    del corrected, truth
    print(f"tuning: {len(tuned.trials)} trials in {time.perf_counter() - t0:.0f} s; best "
          f"{tuned.best} F1 {tuned.best_f1:.3f}")

    # ---------------------------------------------------------------- held-out scan
    methods = {"paper (public code)": RoutineParams(), "older variant":
               RoutineParams.older_variant(), "tuned": tuned.best}
    eval_at = set(range(0, n, args.eval_every))
    pending: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    triples: dict[str, list] = {name: [] for name in methods}
    timing = {"median": [], **{name: [] for name in methods}}
    median = RollingMedianSubtractor(11, circular=True, exclude=exclude)

    def segment_ready(ready):
        for j, image in ready:
            if j not in eval_at:
                continue
            frame, labels = pending.pop(j)
            for name, params in methods.items():
                t = time.perf_counter()
                _, pred = segment_corrected(image, params, exclude)
                timing[name].append(time.perf_counter() - t)
                triples[name].append((labels, pred, frame))

    for i, frame, labels in tqdm(noisy_scan(spec, geometry, 2, 202, args.median_snr),
                                 total=n, desc="held-out scan", unit="frame"):
        if i in eval_at:
            pending[i] = (frame, labels)
        t = time.perf_counter()
        ready = median.push(frame)
        timing["median"].append(time.perf_counter() - t)
        segment_ready(ready)
    segment_ready(median.finish())

    evaluations = {}
    for name in methods:
        evaluations[name] = evaluate_frames(tqdm(triples.pop(name), desc=f"score {name}"),
                                            bins=DEFAULT_SNR_BINS, exclude=exclude)
    out = Path(args.out)
    report = write_report(out, evaluations, title="Standard routine on held-out D35 frames",
                          context={
                              "command": command,
                              "frames": f"{len(eval_at)} of {n} (every {args.eval_every}th), "
                                        f"{args.size}² detector",
                              "tuned on": f"D35 seed 1, frames {tune_at}, "
                                          f"{len(tuned.trials)} random trials",
                              "held out": "D35 seed 2, other background and noise",
                              **{f"params {k}": v for k, v in methods.items()},
                          })
    (out / "tuned_params.json").write_text(json.dumps(
        {"params": tuned.best.to_dict(), "f1": tuned.best_f1, "tune_frames": tune_at}, indent=2))
    tuned.trials.to_csv(out / "tuning_trials.csv", index=False)

    print()
    print(markdown_table(summary_table(evaluations)))
    for name, ev in evaluations.items():
        print(f"\n{name}: {methods[name]}")
        print(markdown_table(ev.by_snr.drop(columns=["snr_min", "snr_max"])))
    steady = timing["median"][11:]
    print(f"\ntime per {args.size}² frame: rolling median {np.median(steady):.3f} s; later stages "
          + ", ".join(f"{k} {np.median(v):.3f} s" for k, v in timing.items() if k != "median"))
    print(f"report: {report}")


if __name__ == "__main__":
    main()
