"""``labdct-live simulate``: a simulated LabDCT scan written to a scan folder."""

from __future__ import annotations

import argparse

ORDER = 10


def add_simulation_arguments(p: argparse.ArgumentParser) -> None:
    """Sample and acquisition options shared by ``simulate`` and ``demo``."""
    p.add_argument("--sample", default="D35",
                   help="preset: D18, D35, D64 (the paper's Al samples) or Fe-exp (default D35)")
    p.add_argument("--projections", type=int, default=None,
                   help="number of projections (default: the preset's, 181 over 360°)")
    p.add_argument("--omega-step", type=float, default=None,
                   help="rotation step in degrees (default: 360 / (projections - 1))")
    p.add_argument("--seed", type=int, default=1, help="random seed of the sample (default 1)")
    p.add_argument("--size-spread", default=None, metavar="CV|paper",
                   help="SD/mean of the grain sizes (Laguerre grains), or 'paper' for Table 1's "
                        "(default: the preset's Voronoi grains, about 0.1)")
    p.add_argument("--lss", type=float, default=None, help="source-sample distance, mm")
    p.add_argument("--lsd", type=float, default=None, help="sample-detector distance, mm")
    p.add_argument("--detector", type=int, nargs=2, metavar=("ROWS", "COLS"), default=None,
                   help="detector size in pixels (default 2032 2032)")
    p.add_argument("--blur", type=float, default=1.0, help="detector blur SD, pixels")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the output folder if it is an earlier output of labdct-live "
                        "(it holds the .labdct-live-output marker); other folders are never "
                        "replaced")


def build_acquisition(args: argparse.Namespace):
    """(Sample, Geometry) from the command-line options."""
    from labdct_live.simulation.microstructure import make_sample
    from labdct_live.simulation.presets import preset

    spread = getattr(args, "size_spread", None)
    if spread not in (None, "paper"):
        try:
            spread = float(spread)
        except ValueError:
            raise ValueError(f"--size-spread must be a number or 'paper', got {spread!r}") from None
    spec, geometry = preset(args.sample, size_spread=spread)
    changes = {}
    if args.projections is not None:
        if args.projections < 1:
            raise ValueError(f"--projections must be at least 1, got {args.projections}")
        changes["n_projections"] = args.projections
        if args.omega_step is None and args.projections > 1:
            changes["omega_step"] = 360.0 / (args.projections - 1)
    if args.omega_step is not None:
        changes["omega_step"] = args.omega_step
    for name in ("lss", "lsd"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.detector is not None:
        changes["detector_shape"] = tuple(args.detector)
    if changes:
        geometry = geometry.with_(**changes)
    return make_sample(spec, seed=args.seed), geometry


#: Bytes per detector pixel and projection of a scan folder (compressed frames and truth.h5),
#: measured 0.25 (D18) to 1.1 (D64, Fe-exp) at the preset geometries, with a margin.
BYTES_PER_PIXEL = 1.5
#: Bytes per sample voxel of grainmap.h5 (measured about 50).
BYTES_PER_VOXEL = 64


def estimate_scan_bytes(sample, geometry) -> int:
    """Expected size of the scan folder
    :func:`~labdct_live.simulation.scanfolder.write_simulated_scan`
    writes for ``sample`` and ``geometry`` (an upper estimate for the shipped presets)."""
    rows, cols = geometry.detector_shape
    pixels = geometry.n_projections * rows * cols
    return int(pixels * BYTES_PER_PIXEL + sample.grain_ids.size * BYTES_PER_VOXEL + 2**20)


def run(args: argparse.Namespace) -> int:
    from labdct_live.io.output import check_output_dir, require_free_space
    from labdct_live.simulation.forward import SimulationOptions
    from labdct_live.simulation.scanfolder import write_simulated_scan

    out = check_output_dir(args.out, overwrite=args.overwrite)  # before any work
    sample, geometry = build_acquisition(args)
    # HDF5 may crash the process when the disk fills mid-write: refuse up front instead.
    require_free_space(out, estimate_scan_bytes(sample, geometry),
                       f"the simulated scan ({geometry.n_projections} projections)")
    write_simulated_scan(args.out, sample, geometry, SimulationOptions(blur_sigma=args.blur),
                         overwrite=args.overwrite)
    print(f"wrote {geometry.n_projections} projections of {args.sample} "
          f"({sample.n_grains} grains) to {args.out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate", help="simulate a LabDCT scan (frames, ground truth, grain map)",
        description="Forward-simulate LabDCT projections of a virtual polycrystal. Writes "
                    "frames/proj_NNNN.tif (uint16), truth.h5 (clean images, spot labels, spot "
                    "table), grainmap.h5 (GrainMapper3D layout) and scan.json into --out.")
    add_simulation_arguments(p)
    p.add_argument("--out", required=True, help="output folder (created)")
    p.set_defaults(func=run)
