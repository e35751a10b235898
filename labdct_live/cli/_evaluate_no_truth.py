"""``labdct-live evaluate --no-truth MASKS --instrument FILE``: the ground-truth-free score.

Scores a segmentation of a real scan by its physical consistency
(:mod:`labdct_live.segmentation.consistency`): Friedel pairs 180° apart (net of a control mirror),
recurrence over neighbouring ω and static structure. Prints the per-frame-pair table and the
scan summary; ``--json FILE`` writes them too.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from labdct_live.cli import CLIError

#: Columns of the printed per-pair table.
PAIR_COLUMNS = ["frame_a", "frame_b", "omega_a", "omega_b", "spots_a", "static_a",
                "consistent_a", "share_a", "spots_b", "static_b", "consistent_b", "share_b"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the ground-truth-free mode (added to ``evaluate``)."""
    from labdct_live.cli._instrument import add_instrument_option
    from labdct_live.segmentation.friedel import (
        DEFAULT_CONTROL_SHIFT,
        DEFAULT_TOLERANCE,
        STATIC_FRACTION,
    )

    g = p.add_argument_group(
        "without ground truth (--no-truth)",
        "score a segmentation of a real scan by Friedel-pair consistency between frames 180° "
        "apart (net of a control mirror), recurrence over neighbouring omega and static "
        "structure; needs --instrument")
    g.add_argument("--no-truth", metavar="MASKS", default=None,
                   help="folder of binary (0/255) or label TIFFs, one per frame in omega order "
                        "(e.g. the output of 'labdct-live segment')")
    add_instrument_option(g)
    g.add_argument("--mirror-row", default=None, metavar="ROW|auto",
                   help="mirror about this detector row instead of the instrument's exact "
                        "Friedel mirror (beam centre, tilt); 'auto' fits the row that "
                        "maximises the consistent count within 12 px of the beam centre")
    g.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"match radius of a mirrored centroid, pixels (default "
                        f"{DEFAULT_TOLERANCE:g})")
    g.add_argument("--control-shift", type=float, default=DEFAULT_CONTROL_SHIFT,
                   help=f"sideways shift of the control mirrors, pixels (default "
                        f"{DEFAULT_CONTROL_SHIFT:g}; more than twice the tolerance)")
    g.add_argument("--static-fraction", type=float, default=STATIC_FRACTION,
                   help=f"pixels segmented in at least this share of the frames are static "
                        f"background (default {STATIC_FRACTION:g}; above 1 disables)")
    g.add_argument("--json", metavar="FILE", default=None,
                   help="also write the summary, per-pair and per-frame tables as JSON")


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


def _records(table) -> list[dict]:
    return [{k: _clean(v) for k, v in row.items()} for row in table.to_dict("records")]


def run(args: argparse.Namespace) -> int:
    from labdct_live.cli._instrument import instrument_from_args
    from labdct_live.io.frames import open_frame_folder
    from labdct_live.segmentation.consistency import fit_mirror_row, score_scan
    from labdct_live.segmentation.friedel import frame_spots, friedel_mirror
    from labdct_live.segmentation.report import markdown_table

    if not args.instrument:
        raise CLIError("--no-truth needs --instrument FILE: the rotation angles and the beam "
                       "centre define the Friedel pairs (see docs/examples/iron_ff_labdct.yaml)")
    if args.truth or args.pred:
        raise CLIError("--no-truth scores a segmentation without ground truth: drop --truth "
                       "and --pred")
    if args.control_shift <= 2 * args.tolerance:
        raise CLIError(f"--control-shift {args.control_shift:g} must exceed twice --tolerance "
                       f"{args.tolerance:g}, or the control finds the true mates")
    masks = open_frame_folder(args.no_truth)
    instrument = instrument_from_args(args, shape=masks.shape, n_frames=len(masks))
    exclude = instrument.beamstop_mask()
    row0 = instrument.beam_center[0]
    if args.mirror_row is None:
        mirror = friedel_mirror(instrument.geometry)
        mirror_text = "the instrument's Friedel mirror"
    elif args.mirror_row == "auto":
        spots = [frame_spots(masks[i]).without_labels() for i in range(len(masks))]
        row, _ = fit_mirror_row(spots, instrument.omegas, row0, tolerance=args.tolerance,
                                control_shift=args.control_shift, exclude=exclude)
        mirror, mirror_text = row, f"row {row:g} (fitted)"
    else:
        try:
            mirror = float(args.mirror_row)
        except ValueError:
            raise CLIError(f"--mirror-row takes a row or 'auto', got {args.mirror_row!r}"
                           ) from None
        mirror_text = f"row {mirror:g}"
    result = score_scan(masks.__getitem__, instrument.omegas, mirror, n=len(masks),
                        tolerance=args.tolerance, control_shift=args.control_shift,
                        exclude=exclude, static_fraction=args.static_fraction, progress=True)
    if result.per_pair.empty:
        raise CLIError(f"--instrument {args.instrument}: no two frames are 180° apart, so "
                       "there are no Friedel pairs to score")
    print(markdown_table(result.per_pair[PAIR_COLUMNS], digits=2))
    s = result.summary
    print()
    print(f"{masks.folder}: {s.n_frames} frames, {s.n_pairs} Friedel pairs, mirror: "
          f"{mirror_text}, tolerance {s.tolerance:g} px, control shift {s.control_shift:g} px")
    print(f"spots/frame {s.spots_per_frame:.1f}  Friedel-consistent/frame "
          f"{s.consistent_per_frame:.1f}  share {s.share:.3f}  static spots/frame "
          f"{s.static_spots_per_frame:.1f}  static pixels {s.static_pixels}  net recurrence "
          f"share {s.recurrence_share:.3f}")
    if args.json:
        path = Path(args.json)
        path.write_text(json.dumps({
            "masks": str(Path(args.no_truth).resolve()),
            "instrument": str(Path(args.instrument).resolve()),
            "mirror": mirror_text,
            "summary": {k: _clean(v) for k, v in s.to_dict().items()},
            "pairs": _records(result.per_pair),
            "frames": _records(result.per_frame),
        }, indent=1))
        print(f"written: {path}")
    return 0
