"""``labdct-live reconstruct``: a grain map from binary frames by forward-model indexing."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from labdct_live.cli import CLIError

ORDER = 75


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reconstruct",
        help="reconstruct a grain map from binary frames (forward-model indexing)",
        description=(
            "Reconstruct the grain map of INPUT: a simulated scan folder (its ground-truth "
            "spot masks by default), a segmented folder written by 'labdct-live segment' (its "
            "geometry, rotation angles and material from the scan it segmented), or a folder "
            "of binary TIFFs with --geometry, --material and --sample. Writes GRAINMAP.h5 "
            "(GrainMapper3D layout), GRAINMAP_grains.csv (one row per grain) and "
            "GRAINMAP_reconstruction.json (threshold, null test, timings). With --from-catalog "
            "URI --run UID the binary frames are those of the catalog's processed/UID, the "
            "geometry, material and sample those of the raw run's start document. Method: "
            "docs/reconstruction.md."),
    )
    p.add_argument("input", metavar="INPUT", nargs="?",
                   help="scan, segmented or binary-frame folder (not with --from-catalog)")
    p.add_argument("--from-catalog", metavar="URI", help="tiled server holding the processed run")
    p.add_argument("--run", metavar="UID", help="the processed run's key (the raw run's uid)")
    p.add_argument("--api-key", help="the catalog's API key (default: $TILED_API_KEY)")
    p.add_argument("--out", required=True, metavar="GRAINMAP.h5", help="output grain map")
    p.add_argument("--binary", choices=("auto", "labels", "frames"), default="auto",
                   help="simulated scans: ground-truth masks (labels) or frames above the "
                        "background (default: labels when truth.h5 exists)")
    p.add_argument("--geometry", metavar="JSON", help="geometry file (Geometry.to_dict() keys "
                   "or a scan.json); overrides the scan's")
    p.add_argument("--material", help="sample material, e.g. Al or Fe (default: the scan's)")
    p.add_argument("--sample", metavar="D,H", help="sample cylinder diameter,height in mm "
                   "(default: the scan's)")
    p.add_argument("--voxel-size", type=float, metavar="MM",
                   help="output voxel edge in mm (default: the scan's, else 0.005)")
    p.add_argument("--grain-size", type=float, metavar="MM",
                   help="expected mean grain diameter in mm (default: from the scan, else 0.03)")
    p.add_argument("--threshold", type=float, metavar="C",
                   help="least grain completeness (default: from an omega-scrambled null test)")
    p.add_argument("--grid-resolution", type=float, default=3.0, metavar="DEG",
                   help="orientation grid spacing in degrees (default: 3)")
    p.add_argument("--tolerance", type=float, default=0.5, metavar="PX",
                   help="hit tolerance in pixels (default 0.5: the spot must land on a "
                        "segmented pixel)")
    p.add_argument("--bin", type=int, default=1, metavar="N",
                   help="OR-bin the binary frames N x N first (N**2 times faster, coarser "
                        "spots; as the end-of-scan reconstruction's reconstruct_bin; "
                        "default: 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace GRAINMAP.h5 if it exists")
    p.set_defaults(func=run)


def _sample(text: str | None):
    from labdct_live.reconstruction import SampleEnvelope

    if text is None:
        return None
    try:
        d, h = (float(v) for v in text.split(","))
    except ValueError:
        raise CLIError(f"--sample {text!r}: expected DIAMETER,HEIGHT in mm, e.g. 0.2,0.3"
                       ) from None
    return SampleEnvelope(d, h)


def _read_input(args: argparse.Namespace):
    from labdct_live.reconstruction.readers import read_scan

    if args.from_catalog is None:
        if args.input is None or args.run is not None:
            raise CLIError("give INPUT (a folder), or --from-catalog URI --run UID")
        return read_scan(args.input, binary=args.binary, geometry=args.geometry,
                         material=args.material, envelope=_sample(args.sample))
    if args.input is not None or args.run is None:
        raise CLIError("--from-catalog URI needs --run UID and no INPUT folder")
    if args.geometry is not None:
        raise CLIError("--geometry is not used with --from-catalog: the geometry is the raw "
                       "run's (its start document)")
    import os

    from labdct_live.callbacks.reconstruction import scan_from_catalog
    from labdct_live.catalog.client import connect
    from labdct_live.io.names import check_key

    run_uid = check_key(args.run, "--run")
    client = connect(args.from_catalog, args.api_key or os.environ.get("TILED_API_KEY"))
    return scan_from_catalog(client, run_uid, material=args.material,
                             envelope=_sample(args.sample))


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from labdct_live.reconstruction import (
        LowCompletenessWarning,
        ReconstructionOptions,
        SearchSettings,
        reconstruct,
    )
    from labdct_live.reconstruction.output import grain_summary, write_reconstruction

    out = Path(args.out)
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise CLIError(f"--out {out}: give an .h5 file name")
    if out.exists() and not args.overwrite:
        raise CLIError(f"--out {out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise CLIError(f"--out {out}: the folder {out.parent} does not exist")
    if args.tolerance < 0 or not 0.25 <= args.grid_resolution <= 20:
        raise CLIError("--tolerance must be >= 0 px and --grid-resolution in [0.25, 20] deg")
    if args.bin < 1:
        raise CLIError(f"--bin must be at least 1, got {args.bin}")
    scan = _read_input(args)
    if args.bin > 1:
        from labdct_live.callbacks.reconstruction import bin_scan

        scan = bin_scan(scan, args.bin)
    search = replace(SearchSettings(), grid_resolution=args.grid_resolution,
                     direction_tol=max(1.0, 0.5 * args.grid_resolution),
                     tol_px=args.tolerance)
    options = ReconstructionOptions(voxel_size=args.voxel_size, grain_size=args.grain_size,
                                    threshold=args.threshold, search=search, seed=args.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LowCompletenessWarning)
        result = reconstruct(scan, options, progress=True)
    paths = write_reconstruction(out, result, scan)
    print(grain_summary(result))
    s = result.stats
    print(f"{len(result.grains)} grains, median completeness {s['median_completeness']:.3f} "
          f"(threshold {result.threshold:.3f} from "
          f"{'the null test' if args.threshold is None else '--threshold'}), "
          f"{s['n_voxels']} voxels in {s['time_total']:.1f} s")
    print("wrote " + ", ".join(str(p) for p in paths))
    for w in caught:
        if issubclass(w.category, LowCompletenessWarning):
            print(f"warning: {w.message}")
    return 0
