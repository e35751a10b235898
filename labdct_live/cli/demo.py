"""``labdct-live demo``: the main job, a simulated LabDCT scan from start to finish.

Until the live Bluesky processing lands, the demo simulates a scan and writes it to disk.
"""

from __future__ import annotations

import argparse
import time

from .simulate import add_simulation_arguments

ORDER = 0


def run(args: argparse.Namespace) -> int:
    from ..scanfiles import write_simulated_scan
    from ..simulate import SimulationOptions
    from .simulate import build_acquisition

    t0 = time.perf_counter()
    sample, geometry = build_acquisition(args)
    out = write_simulated_scan(args.out, sample, geometry, SimulationOptions(blur_sigma=args.blur),
                               overwrite=True)
    elapsed = time.perf_counter() - t0
    print(f"\nSimulated {geometry.n_projections} projections of {args.sample} "
          f"({sample.n_grains} grains) in {elapsed:.0f} s.")
    print(f"  frames       {out / 'frames'}  (uint16 TIFF, one per projection)")
    print(f"  ground truth {out / 'truth.h5'}  (clean images, spot labels, spot table)")
    print(f"  grain map    {out / 'grainmap.h5'}  (GrainMapper3D layout)")
    print(f"  description  {out / 'scan.json'}")
    print("Look at a frame:  python -c \"import tifffile, matplotlib.pyplot as plt; "
          f"plt.imshow(tifffile.imread('{out}/frames/proj_0000.tif'), vmin=900, vmax=1300); "
          "plt.show()\"")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the main job: a simulated scan, end to end",
                              description=__doc__)
    add_simulation_arguments(p)
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.set_defaults(func=run)
