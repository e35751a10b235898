"""Spot F1 by SNR bin on held-out scans: U-Net model(s) vs the tuned standard routine.

    python benchmarks/validate_dl.py --models labdct_live/models/weights/compact_s4.pt \
        --scans D35:2,Fe-exp:3 --out out/validate_dl

Held-out scans are samples (and, for Fe-exp, a material/geometry) not used in training: each
``PRESET:SEED`` scan is simulated at 2032², made noisy by Eq. 1-2 exactly as in
``validate_routine.py`` (one background and exposure per scan, independent noise per frame),
and every ``--eval-every``-th frame is segmented by

- each U-Net given (denoise, then one threshold; the threshold is calibrated for F1 on a
  separate D35 calibration scan, sample seed 9),
- the standard routine with the tuned parameters (``--tuned`` JSON from validate_routine.py)
  and with the public-code ("paper") parameters,
- a plain threshold of the raw frame minus its rolling median (the "no model" baseline),

and scored against the simulator's spot labels (matching, F1 by SNR bin, pixel IoU).
Prints the tables and seconds per frame; writes OUT/report.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from validate_routine import d35_geometry, evenly_spaced, noisy_scan  # noqa: E402

from labdct_live.models.inference import Denoiser  # noqa: E402
from labdct_live.segmentation.metrics import DEFAULT_SNR_BINS, evaluate_frames
from labdct_live.segmentation.report import markdown_table, summary_table, write_report
from labdct_live.segmentation.rolling_median import RollingMedianSubtractor
from labdct_live.segmentation.routine import RoutineParams, segment_corrected
from labdct_live.segmentation.spots import label_spots
from labdct_live.segmentation.threshold import threshold_segment
from labdct_live.simulation.presets import preset

#: The tuned parameters measured by validate_routine.py (docs/validation.md), used when no
#: --tuned file is given.
TUNED = RoutineParams(window=11, background=20.0, sigma=1.0, percent=0.05, min_size=10)


def _model_name(path: str) -> str:
    """A checkpoint's name: its file stem, or its run folder for a training run's model.pt."""
    p = Path(path)
    return p.parent.name if p.stem in ("model", "best", "last") else p.stem


def scan_geometry(name: str, projections: int):
    if name == "D35":
        return d35_geometry(2032, projections)
    spec, geometry = preset(name)
    return spec, geometry.with_(n_projections=projections,
                                omega_step=360.0 / (projections - 1))


def calibrate_threshold(denoiser: Denoiser, frames, exclude, candidates) -> tuple[float, dict]:
    """Threshold with the best overall F1 on calibration frames."""
    outputs = [(labels, denoiser(frame), frame) for frame, labels in frames]
    scores = {}
    for t in candidates:
        triples = [(labels, label_spots(threshold_segment(d, t, 2, exclude))[0], frame)
                   for labels, d, frame in outputs]
        scores[t] = evaluate_frames(triples, bins=DEFAULT_SNR_BINS, exclude=exclude).summary["f1"]
    best = max(scores, key=scores.get)
    return best, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="checkpoint files, comma-separated")
    ap.add_argument("--scans", default="D35:2,Fe-exp:3", help="PRESET:SAMPLE_SEED, comma-separated")
    ap.add_argument("--projections", type=int, default=181)
    ap.add_argument("--median-snr", type=float, default=2.5)
    ap.add_argument("--eval-every", type=int, default=12)
    ap.add_argument("--tuned", default=None, help="tuned_params.json from validate_routine.py")
    ap.add_argument("--out", default="out/validate_dl")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    command = "python " + shlex.join(sys.argv)
    tuned = TUNED
    if args.tuned:
        tuned = RoutineParams(**json.loads(Path(args.tuned).read_text())["params"])
    denoisers = {_model_name(m): Denoiser(m, threads=args.threads)
                 for m in args.models.split(",")}

    # ---- calibrate each model's threshold on a separate scan (D35, sample seed 9)
    spec, geometry = d35_geometry(2032, 37)
    exclude = geometry.beamstop_mask()
    calib_at = set(evenly_spaced(37, 6))
    calib = [(frame, labels) for i, frame, labels in
             noisy_scan(spec, geometry, 9, 909, args.median_snr) if i in calib_at]
    thresholds = {}
    for name, d in denoisers.items():
        thresholds[name], scores = calibrate_threshold(d, calib, exclude,
                                                       [0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
        print(f"{name}: threshold {thresholds[name]} (calibration F1 "
              + ", ".join(f"{t}: {f:.3f}" for t, f in scores.items()) + ")")

    out = Path(args.out)
    tables = {}
    timing: dict[str, list] = {}
    for scan in args.scans.split(","):
        name, seed = scan.split(":")
        spec, geometry = scan_geometry(name, args.projections)
        exclude = geometry.beamstop_mask()
        n = geometry.n_projections
        eval_at = set(range(0, n, args.eval_every))
        methods = ([f"U-Net {m}" for m in denoisers]
                   + ["routine tuned", "routine paper params", "median-subtracted threshold"])
        triples = {m: [] for m in methods}
        pending = {}
        median = RollingMedianSubtractor(11, circular=True, exclude=exclude)

        def segment_ready(ready, pending=pending, exclude=exclude, triples=triples):
            for j, corrected in ready:
                if j not in pending:
                    continue
                frame, labels = pending.pop(j)
                for m, params in (("routine tuned", tuned), ("routine paper params",
                                                              RoutineParams())):
                    t = time.perf_counter()
                    _, pred = segment_corrected(corrected, params, exclude)
                    timing.setdefault(m, []).append(time.perf_counter() - t)
                    triples[m].append((labels, pred, frame))
                # the "no model" baseline: one threshold on the median-subtracted frame
                noise = np.std(corrected[~exclude])
                pred = label_spots(threshold_segment(corrected, 3 * noise, 2, exclude))[0]
                triples["median-subtracted threshold"].append((labels, pred, frame))

        seed_i = int(seed)
        for i, frame, labels in tqdm(noisy_scan(spec, geometry, seed_i, 100 * seed_i + seed_i,
                                                args.median_snr),
                                     total=n, desc=f"held-out {scan}", unit="frame"):
            if i in eval_at:
                pending[i] = (frame, labels)
                for m, d in denoisers.items():
                    t = time.perf_counter()
                    denoised = d(frame)
                    pred = label_spots(threshold_segment(denoised, thresholds[m], 2, exclude))[0]
                    timing.setdefault(f"U-Net {m}", []).append(time.perf_counter() - t)
                    triples[f"U-Net {m}"].append((labels, pred, frame))
            segment_ready(median.push(frame))
        segment_ready(median.finish())
        evaluations = {m: evaluate_frames(triples[m], bins=DEFAULT_SNR_BINS, exclude=exclude)
                       for m in methods}
        tables[scan] = evaluations
        write_report(out / scan.replace(":", "_seed"), evaluations,
                     title=f"U-Net vs standard routine on held-out {name} (seed {seed})",
                     context={"command": command, "frames": f"{len(eval_at)} of {n}",
                              "thresholds": thresholds, "tuned routine": str(tuned)})
        print(f"\n## {scan}\n")
        print(markdown_table(summary_table(evaluations)))
        for m, ev in evaluations.items():
            print(f"\n{m}")
            print(markdown_table(ev.by_snr.drop(columns=["snr_min", "snr_max"])))
    print("\nseconds per 2032² frame (median): "
          + ", ".join(f"{m} {np.median(v):.3f}" for m, v in timing.items())
          + " (routine: after the rolling median)")


if __name__ == "__main__":
    main()
