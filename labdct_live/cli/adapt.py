"""``labdct-live adapt``: fine-tune the shipped U-Net to an instrument from its own frames.

Example (the whole command fits ``--minutes``; interrupted, it resumes)::

    labdct-live adapt scan/frames --instrument my_instrument.yaml --out models/mine.pt
    labdct-live adapt scan/frames --instrument my_instrument.yaml --out models/mine.pt --resume
    labdct-live segment scan/frames masks/ --method dl --model models/mine.pt

See docs/adapt.md and :mod:`labdct_live.models.adapt`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from labdct_live.cli import CLIError

ORDER = 42


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "adapt", help="adapt the U-Net to your instrument from its unlabelled frames",
        description="Estimate the detector's noise and backgrounds from a folder of frames, "
                    "simulate spots in the instrument's geometry, fine-tune the shipped U-Net "
                    "on them within a time budget, choose the threshold by the Friedel-pair "
                    "score of the frames, and write the adapted model with its provenance.")
    p.add_argument("frames", help="folder of the scan's TIFF frames, in rotation order")
    p.add_argument("--out", required=True, metavar="MODEL",
                   help="the adapted checkpoint to write (e.g. models/mine.pt)")
    p.add_argument("--instrument", required=True, metavar="FILE",
                   help="instrument metadata file (distances, pixels, beam centre, beam stop, "
                        "omega list, material; see docs/examples/iron_ff_labdct.yaml)")
    p.add_argument("--minutes", type=float, default=25.0,
                   help="time budget of the whole command (default 25)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps (default: as many as the budget allows, at most "
                        "--max-steps)")
    p.add_argument("--max-steps", type=int, default=250,
                   help="most training steps within the budget (default 250: longer "
                        "fine-tuning scored lower on real frames, docs/adapt.md)")
    p.add_argument("--input", choices=("static", "raw"), default="static",
                   help="what the network sees: the frame minus the scan's static background "
                        "(default) or the raw frame")
    p.add_argument("--projections", type=int, default=24,
                   help="projections simulated in the instrument's geometry (default 24)")
    p.add_argument("--sample-diameter", type=float, default=None, metavar="MM",
                   help="simulated sample diameter (default: the file's sample radius x 2, "
                        "else 0.4 mm)")
    p.add_argument("--grain-size", type=float, default=0.05, metavar="MM",
                   help="mean grain size of the simulated sample (default 0.05 mm)")
    p.add_argument("--snr", type=float, nargs=2, default=(0.7, 6.0), metavar=("LOW", "HIGH"),
                   help="range of the median spot SNR of the synthetic frames (default 0.7 6, "
                        "the shipped model's)")
    p.add_argument("--crop", type=int, default=256, help="training crop side (default 256)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default 3e-4)")
    p.add_argument("--val-every", type=int, default=50,
                   help="validation and checkpoint interval, steps (default 50)")
    p.add_argument("--score-pairs", type=int, default=6,
                   help="Friedel pairs of frames that choose the threshold (default 6)")
    p.add_argument("--min-share", type=float, default=0.5,
                   help="least Friedel-consistent share of the chosen threshold (default 0.5)")
    p.add_argument("--base-model", default=None, metavar="MODEL",
                   help="checkpoint to start from (default: the shipped model)")
    p.add_argument("--work", default=None, metavar="DIR",
                   help="caches and the training run (default MODEL.work)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    positive = {"--minutes": args.minutes, "--projections": args.projections,
                "--crop": args.crop, "--batch-size": args.batch_size, "--lr": args.lr,
                "--val-every": args.val_every, "--score-pairs": args.score_pairs,
                "--grain-size": args.grain_size, "--max-steps": args.max_steps}
    if args.steps is not None:
        positive["--steps"] = args.steps
    if args.sample_diameter is not None:
        positive["--sample-diameter"] = args.sample_diameter
    for name, value in positive.items():
        if not value > 0:
            raise CLIError(f"{name} must be positive, got {value}")
    if not 0 <= args.min_share <= 1:
        raise CLIError(f"--min-share must be in [0, 1], got {args.min_share}")
    if not 0 < args.snr[0] <= args.snr[1]:
        raise CLIError(f"--snr needs 0 < LOW <= HIGH, got {args.snr[0]} {args.snr[1]}")
    if args.crop < 32:
        raise CLIError(f"--crop must be at least 32 pixels, got {args.crop}")


def run(args: argparse.Namespace) -> int:
    _check(args)
    folder = Path(args.frames)
    if not folder.is_dir():
        raise CLIError(f"{folder}: not a folder of frames")
    out = Path(args.out)
    if out.exists() and not args.resume:
        raise CLIError(f"--out {out} exists: choose another file or remove it")
    from labdct_live.io.frames import open_frame_folder
    from labdct_live.models.adapt import AdaptSettings, adapt
    from labdct_live.simulation.instrument import load_instrument

    instrument = load_instrument(args.instrument)
    stack = open_frame_folder(folder)
    if len(stack) < 3:
        raise CLIError(f"{folder}: {len(stack)} frames; adapting needs a scan (at least 3)")
    frames = stack.load()
    if frames.shape[1:] != tuple(instrument.geometry.detector_shape):
        raise CLIError(f"--instrument {args.instrument}: detector.shape "
                       f"{list(instrument.geometry.detector_shape)} does not match the "
                       f"{frames.shape[1]}x{frames.shape[2]} frames of {folder}")
    if len(frames) != len(instrument.omegas):
        raise CLIError(f"--instrument {args.instrument}: the rotation has "
                       f"{len(instrument.omegas)} angles but {folder} has {len(frames)} frames")
    settings = AdaptSettings(
        minutes=args.minutes, steps=args.steps, max_steps=args.max_steps, input=args.input,
        projections=args.projections, sample_diameter_mm=args.sample_diameter,
        grain_size_mm=args.grain_size, crop=args.crop, batch_size=args.batch_size,
        lr=args.lr, val_every=args.val_every, score_pairs=args.score_pairs,
        min_share=args.min_share, seed=args.seed, threads=args.threads,
        median_snr_range=tuple(args.snr))
    report = adapt(frames, instrument, out, settings=settings, work_dir=args.work,
                   base_model=args.base_model, resume=args.resume,
                   frame_names=stack.names, progress=not args.no_progress)
    summary = {k: report[k] for k in ("out", "score_before", "score_after", "threshold_rule",
                                      "seconds")}
    summary["noise_model"] = report["noise_model"]
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0
