"""``labdct-live evaluate``: score a segmentation against ground truth and write a report."""

from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path

import numpy as np

from labdct_live.cli import CLIError

ORDER = 35

log = logging.getLogger(__name__)


class _Truth:
    """Ground truth from a simulated scan folder or from a folder of label/mask TIFFs."""

    def __init__(self, path: Path, frames_dir: Path | None):
        from labdct_live.io.frames import open_frame_folder

        self.path = path
        self.exclude = None
        if (path / "scan.json").is_file() and (path / "truth.h5").is_file():
            from labdct_live.simulation.scanfolder import SimulatedScan

            self.scan = SimulatedScan.open(path)
            self.names = [Path(f).name for f in self.scan.meta["frames"]]
            self.exclude = self.scan.geometry.beamstop_mask()
            self._labels = self.scan.labels
            frames_dir = frames_dir or path / "frames"
        else:
            stack = open_frame_folder(path)
            self.names = stack.names
            self._labels = stack.__getitem__
        self.frames = open_frame_folder(frames_dir) if frames_dir is not None else None
        if self.frames is not None:
            self._frame_index = {n: i for i, n in enumerate(self.frames.names)}
            missing = [n for n in self.names if n not in self._frame_index]
            if missing:
                raise CLIError(f"--frames {frames_dir} lacks {len(missing)} truth frame(s), "
                               f"e.g. {missing[0]}")

    def labels(self, index: int) -> np.ndarray:
        from labdct_live.segmentation.spots import as_labels

        return as_labels(self._labels(index))

    def frame(self, index: int) -> np.ndarray | None:
        if self.frames is None:
            return None
        return self.frames[self._frame_index[self.names[index]]]


def _parse_bins(text: str) -> tuple[float, ...]:
    try:
        bins = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise CLIError(
            f"--bins takes comma-separated numbers (inf allowed), got {text!r}") from None
    if len(bins) < 2 or any(b <= a for a, b in zip(bins, bins[1:])):
        raise CLIError(f"--bins needs at least two increasing edges, got {text!r}")
    return bins


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this evaluation."""
    words = ["labdct-live", "evaluate", "--truth", args.truth, "--pred", args.pred]
    for option in ("frames", "out", "name"):
        if getattr(args, option):
            words += [f"--{option}", str(getattr(args, option))]
    defaults = {"bins": "0,1,2,4,8,16,inf", "snr": "snr", "min_iou": 0.0, "margin": 20}
    for option, default in defaults.items():
        if getattr(args, option) != default:
            words += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    if args.no_truth:
        from ._evaluate_no_truth import run as run_no_truth

        return run_no_truth(args)
    if not (args.truth and args.pred):
        raise CLIError("give --truth DIR and --pred DIR, or --no-truth MASKS --instrument FILE")
    from tqdm.auto import tqdm

    from labdct_live.io.frames import open_frame_folder
    from labdct_live.io.output import check_output_dir
    from labdct_live.segmentation.metrics import evaluate_frames
    from labdct_live.segmentation.report import markdown_table, summary_table, write_report
    from labdct_live.segmentation.spots import as_labels

    bins = _parse_bins(args.bins)
    out = Path(args.out) if args.out else Path(args.pred) / "evaluation"
    # Before any work. A report replaces an earlier report (write_report's default), never
    # other files; it may lie inside PRED (the default) but not in the truth or frames.
    check_output_dir(out, [args.truth, args.pred, args.frames], overwrite=True,
                     nest_in=[args.pred])
    truth = _Truth(Path(args.truth), Path(args.frames) if args.frames else None)
    pred = open_frame_folder(args.pred)
    truth_index = {n: i for i, n in enumerate(truth.names)}
    unknown = [n for n in pred.names if n not in truth_index]
    if unknown:
        raise CLIError(f"{len(unknown)} predicted frame(s) have no ground truth in "
                       f"{args.truth}, e.g. {unknown[0]}; names must match")
    if len(pred) < len(truth.names):
        log.warning("evaluating %d of the %d truth frames (those in %s)", len(pred),
                    len(truth.names), args.pred)
    if truth.frames is None:
        log.warning("no input frames (--frames): scores by SNR bin are not computed")

    def triples():
        for i, name in enumerate(tqdm(pred.names, desc="evaluate", unit="frame")):
            t = truth_index[name]
            truth_labels = truth.labels(t)
            if truth_labels.shape != pred.shape:
                raise CLIError(f"{name}: truth {truth_labels.shape} and prediction "
                               f"{pred.shape} differ in shape")
            yield truth_labels, as_labels(pred[i]), truth.frame(t)

    evaluation = evaluate_frames(triples(), bins=bins, min_iou=args.min_iou,
                                 margin=args.margin, exclude=truth.exclude,
                                 snr_column=args.snr)
    evaluation.per_frame.insert(1, "name", pred.names)
    name = args.name or Path(args.pred).resolve().name
    print(markdown_table(summary_table({name: evaluation})))
    if not evaluation.by_snr.empty:
        print()
        print(markdown_table(evaluation.by_snr.drop(columns=["snr_min", "snr_max"])))
    report = write_report(out, {name: evaluation}, context={
        "truth": Path(args.truth).resolve(), "prediction": Path(args.pred).resolve(),
        "input frames": truth.frames.folder.resolve() if truth.frames else "none",
        "frames evaluated": len(pred), "SNR": args.snr, "min IoU": args.min_iou,
        "command": _command_line(args),
    })
    print(f"\nreport: {report}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="score a segmentation against ground truth (P/R/F1 by SNR, IoU)",
        description="Match predicted spots to ground-truth spots one-to-one by overlap and "
                    "report precision, recall and F1 overall and by SNR bin, pixel IoU and "
                    "Dice and the boundary error. Prints the tables and writes report.md, "
                    "plots and CSV tables.")
    p.add_argument("--truth", metavar="DIR",
                   help="a simulated scan folder (truth.h5, frames/) or a folder of label or "
                        "binary-mask TIFFs")
    p.add_argument("--pred", metavar="DIR",
                   help="the segmentation: binary (0/255) or label TIFFs named like the frames")
    p.add_argument("--frames", metavar="DIR",
                   help="input frames the SNR is measured on (default: TRUTH/frames for a "
                        "simulated scan; without frames no SNR bins)")
    p.add_argument("--out", metavar="DIR",
                   help="report folder (default PRED/evaluation); an earlier report there is "
                        "replaced, a folder labdct-live did not write never is")
    p.add_argument("--name", help="name of the prediction in the report (default: PRED's)")
    p.add_argument("--bins", default="0,1,2,4,8,16,inf",
                   help="SNR bin edges (default 0,1,2,4,8,16,inf)")
    p.add_argument("--snr", choices=("snr", "snr_combined"), default="snr",
                   help="SNR definition: background SD only (default) or both SDs")
    p.add_argument("--min-iou", type=float, default=0.0,
                   help="overlaps with IoU at or below this do not count (default 0)")
    p.add_argument("--margin", type=int, default=20,
                   help="background margin around a spot for its SNR, pixels (default 20)")
    from ._evaluate_no_truth import add_arguments

    add_arguments(p)
    p.set_defaults(func=run)
