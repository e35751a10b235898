"""Speed and accuracy of the grain reconstruction on a D35-like simulated scan.

Simulates a sample with the D35 preset's grain size, material and geometry (Lss = Lsd =
11 mm, 140 kV), optionally smaller than D35 (``--diameter``, ``--height``: the grain count
follows the volume) and on a binned detector (``--detector``), with ``--projections``
projections over 360°. The binary frames are the simulator's noise-free ground-truth spot
masks. Reconstructs them, compares the grain map with the truth (labdct_live.grains.compare) and
prints one JSON line: voxels/s, tests/s, and the accuracy figures of docs/reconstruction.md.

    python benchmarks/bench_reconstruction.py                       # reduced D35 (default)
    python benchmarks/bench_reconstruction.py --diameter 0.2 --height 0.3 --detector 2032
                                                                     # full D35 (slow)

``--cache DIR`` keeps the simulated frames and the true grain map in DIR (one .npz and one
.h5 per set of options), so a second run reconstructs the same scan without simulating it.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from labdct_live.acquisition.detector import scaled_geometry
from labdct_live.grains.compare.comparison import compare_grainmaps
from labdct_live.grains.formats.gm3d import read_gm3d, write_gm3d
from labdct_live.reconstruction import (
    ForwardModel,
    ReconstructionOptions,
    SampleEnvelope,
    ScanData,
    SearchSettings,
    misorientation_deg,
    reconstruct,
)
from labdct_live.simulation.forward import Simulator
from labdct_live.simulation.microstructure import make_sample
from labdct_live.simulation.presets import preset
from labdct_live.simulation.scanfolder import grainmap_of


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="D35")
    p.add_argument("--diameter", type=float, default=0.12, help="sample diameter, mm")
    p.add_argument("--height", type=float, default=0.12, help="sample height, mm")
    p.add_argument("--detector", type=int, default=1016, help="detector pixels per side")
    p.add_argument("--projections", type=int, default=181)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--voxel-size", type=float, default=None, help="mm (default: the sample's)")
    p.add_argument("--cache", default=None, help="folder for the simulated frames and truth")
    p.add_argument("--options", default="{}",
                   help='ReconstructionOptions as JSON, e.g. \'{"coarse_step": 1, "search": '
                        '{"n_refine": 4}}\'')
    p.add_argument("--progress", action="store_true", help="progress bars (stderr)")
    p.add_argument("--simulate-only", action="store_true",
                   help="only fill the --cache (no reconstruction)")
    args = p.parse_args()
    if args.progress:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    spec, geometry = preset(args.preset)
    d35_volume = np.pi * (spec.diameter / 2) ** 2 * spec.height
    volume = np.pi * (args.diameter / 2) ** 2 * args.height
    n_grains = max(1, int(round(spec.grain_count * volume / d35_volume)))
    spec = replace(spec, diameter=args.diameter, height=args.height, n_grains=n_grains,
                   voxel_size=spec.resolved_voxel_size, name=f"{args.preset}-like")
    step = 360.0 / (args.projections - 1)
    geometry = scaled_geometry(geometry.with_(n_projections=args.projections, omega_step=step),
                               (args.detector, args.detector))
    t0 = time.perf_counter()
    stem = None
    if args.cache:
        stem = str(Path(args.cache) / (f"{args.preset}_{args.diameter:g}x{args.height:g}_"
                                       f"{args.detector}px_{args.projections}p_s{args.seed}"))
    if stem is not None and Path(stem + ".npz").is_file():
        with np.load(stem + ".npz") as cached:
            frames = np.unpackbits(cached["frames"], axis=-1,
                                   count=args.detector).astype(bool)
            spots = list(cached["spots"])
            voxel_size = float(cached["voxel_size"])
        truth = read_gm3d(stem + ".h5")
        n_true = truth.n_grains
    else:
        sample = make_sample(spec, seed=args.seed)
        sim = Simulator(sample, geometry)
        frames = np.empty((args.projections,) + geometry.detector_shape, dtype=bool)
        spots = []
        for k, omega in enumerate(geometry.omegas):
            proj = sim.project(float(omega))
            frames[k] = proj.labels > 0
            spots.append(len(proj.spots))
        truth = grainmap_of(sample)
        voxel_size, n_true = sample.voxel_size, sample.n_grains
        if stem is not None:
            Path(args.cache).mkdir(parents=True, exist_ok=True)
            np.savez(stem + ".npz", frames=np.packbits(frames, axis=-1),
                     spots=np.asarray(spots), voxel_size=voxel_size)
            write_gm3d(stem + ".h5", truth)
    t_sim = time.perf_counter() - t0
    if args.simulate_only:
        print(json.dumps({"cached": stem, "simulate_s": round(t_sim, 1)}))
        return

    scan = ScanData(frames, geometry.omegas, geometry, spec.material,
                    SampleEnvelope(spec.diameter, spec.height),
                    extra={"voxel_size": voxel_size, "n_grains": n_true})
    t1 = time.perf_counter()
    cpu1 = time.process_time()
    model = ForwardModel.from_scan(scan)
    asked = json.loads(args.options)
    given = dict(asked)
    search = replace(SearchSettings(), **given.pop("search", {}))
    options = ReconstructionOptions(voxel_size=args.voxel_size, search=search, **given)
    result = reconstruct(scan, options, model=model, progress=args.progress)
    t_rec = time.perf_counter() - t1
    cpu_rec = time.process_time() - cpu1
    stats = result.stats

    comparison = compare_grainmaps(truth, result.grainmap, resample=True)
    counts = comparison.counts()
    ref = comparison.reference_grains
    paired = ref["class"].isin(["one-to-one", "one-to-multi"])
    mis_paired = ref.loc[paired, "misorientation_deg"].to_numpy()
    # orientation-only check: every true grain's nearest reconstructed orientation
    mis_any = misorientation_deg(result.grainmap.orientations[1:][:, None],
                                 truth.orientations[truth.grain_list][None]).min(axis=0) \
        if result.grainmap.n_grains else np.full(truth.n_grains, np.inf)
    search_time = stats["time_null"] + stats["time_search"]
    out = {
        "preset": args.preset, "diameter_mm": args.diameter, "height_mm": args.height,
        "grains_true": int(n_true), "detector": args.detector,
        "projections": args.projections, "spots_per_projection": float(np.mean(spots)),
        "voxel_size_um": stats["voxel_size"] * 1e3, "voxels": stats["n_voxels"],
        "simulate_s": round(t_sim, 1), "reconstruct_s": round(t_rec, 1),
        "reconstruct_cpu_s": round(cpu_rec, 1),
        "stage_s": {k[5:]: round(v, 1) for k, v in stats.items() if k.startswith("time_")},
        "voxels_per_s": round(stats["n_voxels"] / t_rec, 1),
        "seed_orientation_tests_per_s": round(stats["coarse_tests"] / max(search_time, 1e-9)),
        "voxel_grain_tests_per_s": round(stats["assign_tests"] / max(stats["time_assign"], 1e-9)),
        "seeds_searched": stats["n_searched_seeds"], "grid_size": stats["grid_size"],
        "threshold": round(result.threshold, 3),
        "grains_found": int(result.grainmap.n_grains), "counts": counts,
        "paired_within_1deg": round(float(paired.mean()), 4),
        "median_misorientation_deg": round(float(np.median(mis_paired)), 4)
        if mis_paired.size else None,
        "true_grains_with_orientation_within_1deg": round(float(np.mean(mis_any < 1.0)), 4),
        "false_positive_fraction": round(counts["false_positive"] / max(counts["indexed"], 1), 4),
        "mean_delta_gb_um": round(float(np.nanmean(ref.loc[paired, "delta_gb_mm"])) * 1e3, 2)
        if paired.any() else None,
        "median_completeness": round(stats["median_completeness"], 3),
        "false_negative_esd_um": [round(v * 1e3, 1) for v in
                                  ref.loc[ref["class"] == "false negative", "esd_mm"]],
        "true_esd_um_min_median": [round(float(ref["esd_mm"].min()) * 1e3, 1),
                                   round(float(ref["esd_mm"].median()) * 1e3, 1)],
        "options": asked,
        "load_average": open("/proc/loadavg").read().split()[:3],
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
