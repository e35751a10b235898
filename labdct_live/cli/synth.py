"""``labdct-live synth``: synthetic training pairs (noisy input, spot target) in an HDF5 file.

Simulates projections of the chosen samples into ``OUT/projections`` (a projection cache,
resumable) and writes ``OUT/pairs.h5`` (train/validation split) from them, with procedural
backgrounds or backgrounds extracted from experimental frames (Appendix A of the paper).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from labdct_live.cli import CLIError

ORDER = 40


def _names(text: str, what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names and what != "samples":
        raise argparse.ArgumentTypeError(f"--{what} needs at least one name")
    return names


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="make synthetic training pairs (simulation x backgrounds x noise)",
        description=(
            "Simulate projections and turn them into training pairs by Eq. 1-2 of the paper: "
            "noisy input x = x0 + tau*Poisson(x0/2) with x0 = spots + R_BG*I_BG, target = LoG "
            "segmentation of the clean spots (or the simulator's masks). Writes OUT/pairs.h5 "
            "and keeps the simulated projections in OUT/projections for reuse."),
    )
    p.add_argument("--samples", default="D18,D35,D64", type=lambda t: _names(t, "samples"),
                   help="presets simulated at their own (the paper's) geometry, comma-separated "
                        "(default D18,D35,D64; empty for none)")
    p.add_argument("--varied", type=int, default=0, metavar="N",
                   help="also N random acquisitions: Lss, Lsd 11-30 mm, tilts, offsets, "
                        "beam stops, materials (default 0)")
    p.add_argument("--materials", default="Al,Fe", type=lambda t: _names(t, "materials"),
                   help="materials of the --varied acquisitions (default Al,Fe)")
    p.add_argument("--projections", type=int, default=10, metavar="N",
                   help="projections simulated per acquisition (default 10)")
    p.add_argument("--backgrounds", type=int, default=3, metavar="N",
                   help="distinct procedural backgrounds (the paper used 3 experimental ones); "
                        "0 draws a new one for every frame (default 3)")
    p.add_argument("--background-stack", type=Path, default=None, metavar="DIR",
                   help="extract backgrounds from this folder of experimental frames instead "
                        "(Appendix A); they must have the simulated detector's shape")
    p.add_argument("--background-window", type=int, default=60, metavar="N",
                   help="frames per background median for --background-stack (default 60)")
    p.add_argument("--pairs", type=int, required=True, metavar="N", help="pairs to write")
    p.add_argument("--crop", type=int, default=256, metavar="PX",
                   help="crop side in pixels; 0 writes whole frames (default 256)")
    p.add_argument("--spot-fraction", type=float, default=0.75,
                   help="share of crops centred on a spot (default 0.75)")
    p.add_argument("--validation", type=float, default=0.15,
                   help="share of pairs, from separate projections, for validation (default 0.15)")
    p.add_argument("--target", choices=("log", "labels"), default="log",
                   help="target: LoG of the clean image (the paper's) or simulator masks")
    p.add_argument("--format", choices=("float", "uint8"), default="float", dest="input_format",
                   help="inputs: float (normalised per frame, for our training) or uint8 "
                        "(the paper's 8-bit counts) (default float)")
    p.add_argument("--i0", type=float, default=110.0, help="typical background counts I0 (110)")
    p.add_argument("--tau", type=float, default=1.0, help="noise strength tau (1)")
    p.add_argument("--snr", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="range of the per-pair median spot SNR (default 0.7 6)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="projection cache to use or build (default OUT/projections)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing pairs.h5")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from labdct_live.io.frames import open_frame_folder
    from labdct_live.io.output import work_folder
    from labdct_live.simulation.presets import PRESETS

    for name in args.samples:
        if name not in PRESETS:
            raise CLIError(f"unknown sample {name!r} in --samples; choose from {sorted(PRESETS)}")
    if args.varied < 0 or args.projections < 1 or args.pairs < 1 or args.backgrounds < 0:
        raise CLIError("--varied and --backgrounds must be >= 0; --projections and --pairs >= 1")
    if args.crop < 0:
        raise CLIError(f"--crop must be >= 0, got {args.crop}")
    if not args.samples and not args.varied:
        raise CLIError("nothing to simulate: give --samples and/or --varied N")
    out = args.out
    pairs_file = out / "pairs.h5"
    if pairs_file.exists() and not args.overwrite:
        raise CLIError(f"{pairs_file} exists; choose another --out or pass --overwrite")
    # Inputs before the (long) simulation: every frame header is checked here.
    stack = open_frame_folder(args.background_stack) if args.background_stack else None
    # --out grows (a resumable projection cache): checked, not built aside and renamed.
    with work_folder(out, [args.background_stack]):
        return _synthesise(args, out, pairs_file, stack)


def _synthesise(args: argparse.Namespace, out: Path, pairs_file: Path, stack) -> int:
    from labdct_live.io.output import atomic_file
    from labdct_live.training.acquisitions import paper_acquisitions, varied_acquisitions
    from labdct_live.training.backgrounds import extract_backgrounds
    from labdct_live.training.cache import ProjectionCache, build_projection_cache
    from labdct_live.training.crops import CropSettings
    from labdct_live.training.synthesis import SynthesisConfig
    from labdct_live.training.torchdata import write_pair_dataset

    synth_options = {"i0": args.i0, "tau": args.tau, "target": args.target}
    if args.snr is not None:
        synth_options["median_snr_range"] = tuple(args.snr)
    config = SynthesisConfig(**synth_options)
    crops = CropSettings(size=args.crop or None, spot_fraction=args.spot_fraction)

    cache_dir = args.cache or out / "projections"
    if (cache_dir / "index.json").exists():
        cache = ProjectionCache(cache_dir)
        print(f"using the projection cache {cache_dir} ({len(cache)} projections)")
    else:
        acquisitions = paper_acquisitions(args.samples, args.seed)
        if args.varied:
            acquisitions += varied_acquisitions(args.varied, args.seed,
                                                samples=args.samples or ("D18", "D35", "D64"),
                                                materials=args.materials)
        cache = build_projection_cache(cache_dir, acquisitions, args.projections, seed=args.seed)

    backgrounds = None
    if stack is not None:
        backgrounds = extract_backgrounds(stack, window=args.background_window)
    seeds = list(range(args.seed * 1000, args.seed * 1000 + args.backgrounds)) or None
    write_pair_dataset(pairs_file, cache, args.pairs, validation_fraction=args.validation,
                       config=config, crops=crops, backgrounds=backgrounds,
                       background_seeds=seeds, output=args.input_format, seed=args.seed,
                       overwrite=args.overwrite)
    summary = {"pairs": str(pairs_file), "cache": str(cache_dir), "n_pairs": args.pairs,
               "config": config.to_dict(), "crop": args.crop, "format": args.input_format,
               "backgrounds": ("extracted" if backgrounds is not None else
                               (seeds if seeds else "fresh per frame"))}
    with atomic_file(out / "synth.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.pairs} pairs to {pairs_file}")
    return 0
