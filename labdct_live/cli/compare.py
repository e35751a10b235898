"""``labdct-live compare``: compare reconstructed grain maps with a reference (Table 2,
Figs. 7-8)."""

from __future__ import annotations

import argparse
import logging

ORDER = 80

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="compare a reconstructed grain map with a reference grain map",
        description=(
            "Register RECONSTRUCTION onto REFERENCE, pair grains by cubic misorientation, "
            "classify them (one-to-one, one-to-multi, false negative, false positive), "
            "measure the grain-boundary deviation delta_GB and write a report (markdown, CSV, "
            "PNG) to --out. With --second, a second reconstruction of the same reference is "
            "compared too and the ratio delta_GB(RECONSTRUCTION) / delta_GB(SECOND) is "
            "reported (routine first and U-Net second gives the paper's Fig. 7). Files: "
            "GrainMapper3D .h5 (v3-v5), GrainRecon .h5 (--format grainrecon) or DREAM.3D."
        ),
    )
    p.add_argument("reference", metavar="REFERENCE", help="reference grain map (ground truth)")
    p.add_argument("reconstruction", metavar="RECONSTRUCTION", help="reconstructed grain map")
    p.add_argument("--second", metavar="OTHER", help="a second reconstruction to compare")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--threshold", type=float, default=1.0, metavar="DEG",
                   help="largest misorientation of a pair in degrees (default: 1)")
    p.add_argument("--max-distance", type=float, default=None, metavar="MM",
                   help="largest centroid distance of a pair in mm (default: no limit)")
    p.add_argument("--no-overlap", action="store_true",
                   help="pair grains that do not share a voxel too (misorientation only)")
    p.add_argument("--rotation", action="store_true",
                   help="also fit a global rotation on first-pass pairs")
    p.add_argument("--no-register", action="store_true",
                   help="trust the files' centres; no translation search")
    p.add_argument("--resample", action="store_true",
                   help="allow different voxel sizes (resample onto the reference grid)")
    p.add_argument("--format", choices=("auto", "gm3d", "grainrecon", "dream3d"),
                   default="auto", help="file format of the reconstructions (default: auto)")
    p.add_argument("--reference-format", choices=("auto", "gm3d", "grainrecon", "dream3d"),
                   default="auto", help="file format of the reference (default: auto)")
    p.add_argument("--labels", type=_label_list, metavar="NAME[,NAME]",
                   help="names of the reconstructions in the report, as ONE comma-separated "
                        "argument (e.g. routine,U-Net)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it is an earlier output of labdct-live (it holds the "
                        ".labdct-live-output marker); other folders are never replaced")
    p.add_argument("--grains", default=None, metavar="ID,ID",
                   help="reference grains for deviation maps (default: 3 largest paired)")
    p.set_defaults(func=run)


def _label_list(text: str) -> list[str]:
    """``--labels`` value: comma-separated names (one argument, so it cannot take the
    positional files that follow it)."""
    labels = [name.strip() for name in text.split(",")]
    if not all(labels):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return labels


def _grain_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ValueError(f"--grains {text!r}: expected comma-separated grain ids") from exc


def run(args: argparse.Namespace) -> int:
    from labdct_live.grains.compare.comparison import compare_grainmaps, delta_gb_ratio
    from labdct_live.grains.compare.report import write_report
    from labdct_live.grains.formats.registry import read_grainmap
    from labdct_live.io.output import AtomicOutputDir, require_hdf5

    paths = [args.reconstruction] + ([args.second] if args.second else [])
    labels = list(args.labels or [])
    if len(labels) not in (0, len(paths)):
        raise ValueError(f"--labels: give {len(paths)} names, got {len(labels)}")
    labels = labels or (["reconstruction", "second"] if args.second else ["reconstruction"])
    grains = _grain_list(args.grains)
    # All inputs before the (slow) comparison: h5py's error would not name the file.
    for what, path in [("REFERENCE", args.reference), ("RECONSTRUCTION", args.reconstruction),
                       ("--second", args.second)]:
        if path is not None:
            require_hdf5(path, f"{what} grain map")
    output = AtomicOutputDir(args.out, overwrite=args.overwrite, inputs=[args.reference, *paths])
    reference = read_grainmap(args.reference, args.reference_format)
    comparisons = []
    for label, path in zip(labels, paths):
        comparisons.append(compare_grainmaps(
            reference, read_grainmap(path, args.format), threshold_deg=args.threshold,
            max_distance_mm=args.max_distance, require_overlap=not args.no_overlap,
            register_maps=not args.no_register, fit_rotation=args.rotation,
            resample=args.resample, label=label, progress=args.verbose > 0,
        ))
    sources = {"reference": str(args.reference)} | dict(zip(labels, map(str, paths)))
    with output as tmp:  # the report folder appears at --out only when complete
        write_report(comparisons, tmp, deviation_grains=grains, sources=sources)
    report = output.final / "report.md"
    for comp in comparisons:
        c = comp.counts()
        print(f"{comp.label}: {c['indexed']} indexed, {c['one_to_one']} one-to-one, "
              f"{c['one_to_multi']} one-to-multi ({c['one_to_multi_partners']}), "
              f"{c['false_negative']} false negatives, {c['false_positive']} false positives "
              f"(reference: {c['reference']} grains)")
    if len(comparisons) == 2:
        _, stats = delta_gb_ratio(*comparisons)
        print(f"delta_GB ratio over {stats['n_common']} common grains: mean {stats['mean']:.3f}"
              f", SD {stats['sd']:.3f}, > 1 for {stats['fraction_above_1']:.0%}")
    print(f"report: {report}")
    return 0
