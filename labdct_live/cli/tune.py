"""``labdct-live tune``: tune the standard routine's parameters against a simulated scan."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from labdct_live.cli import CLIError

ORDER = 32


def _parse_subset(text: str, n: int) -> list[int]:
    try:
        parts = [int(v) if v else None for v in text.split(":")]
        if len(parts) == 1:
            parts = [parts[0], parts[0] + 1 if parts[0] is not None else None]
        indices = list(range(n))[slice(*parts)]
    except (ValueError, TypeError):
        raise CLIError(f"--subset takes START:STOP[:STEP] frame indices, got {text!r}") from None
    if not indices:
        raise CLIError(f"--subset {text} selects no frame of the {n}")
    return indices


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from labdct_live import __version__
    from labdct_live.io.frames import open_frame_folder
    from labdct_live.io.output import atomic_file, make_parent_folder, probe_writable
    from labdct_live.segmentation.rolling_median import RollingMedianSubtractor
    from labdct_live.segmentation.tune import tune_routine
    from labdct_live.simulation.scanfolder import SimulatedScan

    out = Path(args.out)
    trials_csv = out.with_suffix(".trials.csv")
    # Before the search, which can take minutes: both files must be writable.
    for path in (out, trials_csv):
        if path.is_dir():
            raise CLIError(f"--out {args.out}: {path} is a folder; give a file name "
                           "(e.g. tuned.json)")
        probe_writable(path)
    scan = SimulatedScan.open(args.truth)
    frames = open_frame_folder(Path(args.frames) if args.frames else Path(args.truth) / "frames")
    if len(frames) != len(scan):
        raise CLIError(f"{frames.folder} has {len(frames)} frames, the scan {len(scan)}")
    subset = _parse_subset(args.subset, len(scan))
    exclude = scan.geometry.beamstop_mask()
    if exclude.shape != frames.shape:
        raise CLIError(f"frames {frames.shape} do not match the scan's detector {exclude.shape}")

    wanted = set(subset)
    corrected = {}
    median = RollingMedianSubtractor(args.window, not args.no_wrap, exclude)
    for frame in tqdm(frames, desc="rolling median", unit="frame"):
        corrected.update((i, c) for i, c in median.push(frame) if i in wanted)
    corrected.update((i, c) for i, c in median.finish() if i in wanted)
    stack = np.stack([corrected[i] for i in subset])
    truth = np.stack([scan.labels(i) for i in subset])

    result = tune_routine(stack, truth, search=args.search, n_trials=args.trials,
                          window=args.window, exclude=exclude, seed=args.seed)
    make_parent_folder(out)
    # Each file appears whole or not at all; the parameters last, as they vouch for the run.
    with atomic_file(trials_csv) as tmp:
        result.trials.to_csv(tmp, index=False)
    with atomic_file(out) as tmp:
        tmp.write_text(json.dumps({
            "params": result.best.to_dict(), "f1": result.best_f1, "truth": str(args.truth),
            "frames": str(frames.folder), "subset": subset, "search": args.search,
            "trials": len(result.trials), "seed": args.seed,
            "labdct_live_version": __version__,
        }, indent=2))
    print(result.trials.head(10).to_string(index=False))
    print(f"\nbest {result.best} F1 {result.best_f1:.3f}\nwrote {out} and {trials_csv}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tune", help="tune the standard routine's parameters against ground truth (F1)",
        description="Grid or random search of the routine's background, sigma, percent and "
                    "minimum size on frames of a simulated scan, maximising the detection F1. "
                    "Writes the best parameters as JSON (usable as 'segment --params') and "
                    "every trial as CSV.")
    p.add_argument("--truth", required=True, metavar="DIR", help="simulated scan folder")
    p.add_argument("--frames", metavar="DIR",
                   help="input frames, e.g. noisy synthesised ones (default TRUTH/frames)")
    p.add_argument("--subset", default="::10",
                   help="frames to tune on, START:STOP[:STEP] (default ::10)")
    p.add_argument("--search", choices=("random", "grid"), default="random")
    p.add_argument("--trials", type=int, default=60, help="random-search trials (default 60)")
    p.add_argument("--window", type=int, default=11, help="rolling-median window (default 11)")
    p.add_argument("--no-wrap", action="store_true", help="the scan is not a full 360°")
    p.add_argument("--seed", type=int, default=0, help="random-search seed (default 0)")
    p.add_argument("--out", required=True, metavar="JSON", help="where to write the best params")
    p.set_defaults(func=run)
