"""When is a scan enough? The live grain map on a simulated D35-like scan, two ω orders.

Simulates (or reads from ``--cache``, as benchmarks/bench_reconstruction.py writes it) a
D35-like scan: 181 projections at 2° of the simulator's noise-free spot masks at 1016². The
frames go through a :class:`~labdct_live.callbacks.live_grainmap.LiveGrainMap` in the order a
``quality_scan`` takes them (coarse-first, stride 8, and sequential); after every ``--every``
frames the study waits for the update (as exposures of minutes would let it), and compares
each update's map with the truth (grains paired within 1°, false grains, mean δ_GB) and with
the map of the full scan. Prints one JSON line per update and a summary per order: the first
update whose decision is ``enough``, and the map's accuracy there against the full scan's.

    python benchmarks/live_grainmap_study.py --cache /tmp/recon-cache [--diameter 0.12]
        [--height 0.12] [--every 20] [--figure docs/images/live_grainmap_d35.png]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from labdct_live.acquisition.detector import scaled_geometry
from labdct_live.acquisition.plans import coarse_first_order
from labdct_live.callbacks.live_grainmap import LiveGrainMap, LiveMapSettings
from labdct_live.callbacks.scan_quality import ENOUGH
from labdct_live.grains.compare.comparison import compare_grainmaps
from labdct_live.grains.formats.gm3d import read_gm3d, write_gm3d
from labdct_live.reconstruction import ReconstructionOptions, SampleEnvelope, ScanData, reconstruct
from labdct_live.simulation.forward import Simulator
from labdct_live.simulation.microstructure import make_sample
from labdct_live.simulation.presets import preset
from labdct_live.simulation.scanfolder import grainmap_of


def simulated_scan(args) -> tuple[np.ndarray, object, object, object, float]:
    """Frames, geometry, sample spec, true grain map and voxel size (cached as
    bench_reconstruction.py caches them)."""
    spec, geometry = preset("D35")
    volume = np.pi * (args.diameter / 2) ** 2 * args.height
    d35_volume = np.pi * (spec.diameter / 2) ** 2 * spec.height
    spec = replace(spec, diameter=args.diameter, height=args.height,
                   n_grains=max(1, int(round(spec.grain_count * volume / d35_volume))),
                   voxel_size=spec.resolved_voxel_size, name="D35-like")
    geometry = scaled_geometry(geometry.with_(n_projections=181, omega_step=2.0), (1016, 1016))
    stem = None
    if args.cache:  # the names of benchmarks/bench_reconstruction.py's cache
        stem = str(Path(args.cache) / f"D35_{args.diameter:g}x{args.height:g}_1016px_181p_"
                                      f"s{args.seed}")
    if stem and Path(stem + ".npz").is_file():
        with np.load(stem + ".npz") as cached:
            frames = np.unpackbits(cached["frames"], axis=-1, count=1016).astype(bool)
            voxel = float(cached["voxel_size"])
        return frames, geometry, spec, read_gm3d(stem + ".h5"), voxel
    sample = make_sample(spec, seed=args.seed)
    sim = Simulator(sample, geometry)
    frames = np.stack([sim.project(float(w)).labels > 0 for w in geometry.omegas])
    truth = grainmap_of(sample)
    if stem:
        Path(args.cache).mkdir(parents=True, exist_ok=True)
        np.savez(stem + ".npz", frames=np.packbits(frames, axis=-1),
                 spots=np.zeros(len(frames)), voxel_size=sample.voxel_size)
        write_gm3d(stem + ".h5", truth)
    return frames, geometry, spec, truth, float(sample.voxel_size)


def accuracy(truth, grainmap) -> dict:
    """Grains paired within 1°, false grains and mean δ_GB (µm) of a map against the truth."""
    comparison = compare_grainmaps(truth, grainmap, resample=True)
    counts = comparison.counts()
    ref = comparison.reference_grains
    paired = ref["class"].isin(["one-to-one", "one-to-multi"])
    return {"paired": int(paired.sum()), "false": int(counts["false_positive"]),
            "delta_gb_um": round(float(np.nanmean(ref.loc[paired, "delta_gb_mm"])) * 1e3, 2)
            if paired.any() else None}


def run_order(order: str, frames, geometry, spec, truth, voxel, full_map, args) -> dict:
    n = len(frames)
    sequence = coarse_first_order(n, 8) if order == "coarse-first" else np.arange(n)
    options = ReconstructionOptions(voxel_size=voxel)
    live = LiveGrainMap(LiveMapSettings(every=args.every, min_frames=args.every, bin=1,
                                        options=options, store=False), report=lambda _: None)
    start_doc = {"geometry": geometry.to_dict(),
                 "sample": {"material": spec.material, "diameter": spec.diameter,
                            "height": spec.height, "n_grains": truth.n_grains,
                            "voxel_size": voxel}}
    key = f"study-{order}"
    rows, t0 = [], time.perf_counter()
    for taken, index in enumerate(sequence, start=1):
        live.add_frame(key, start_doc, int(index), float(geometry.omegas[index]), 60.0,
                       frames[index])
        if taken % args.every == 0 or taken == n:
            live.wait_idle()
            quality = live.latest(key)
            if quality is None or (rows and rows[-1]["update"] == quality.update):
                continue
            result = live.current_map(key)
            row = {"order": order, "frames_taken": taken, **quality.to_dict(),
                   **accuracy(truth, result.grainmap),
                   "vs_full": accuracy(full_map, result.grainmap)["paired"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    enough = next((r for r in rows if r["decision"] == ENOUGH), None)
    return {"order": order, "updates": rows, "enough_at_frames": None if enough is None
            else enough["frames_taken"], "enough": enough, "time_s": time.perf_counter() - t0}


def figure(summaries: list[dict], n_true: int, full_delta_gb: float | None,
           path: str) -> None:
    """Grains paired and mean δ_GB against frames taken, per order; 'enough' dashed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4), layout="constrained")
    ax_p, ax_d = fig.subplots(1, 2)
    for s, colour in zip(summaries, ("C0", "C1")):
        frames = [r["frames_taken"] for r in s["updates"]]
        ax_p.plot(frames, [r["paired"] / n_true for r in s["updates"]], ".-", color=colour,
                  label=s["order"])
        ax_d.plot(frames, [r["delta_gb_um"] for r in s["updates"]], ".-", color=colour,
                  label=s["order"])
        if s["enough_at_frames"]:
            for ax in (ax_p, ax_d):
                ax.axvline(s["enough_at_frames"], color=colour, ls="--", lw=1)
    if full_delta_gb is not None:
        ax_d.axhline(full_delta_gb, color="k", lw=1, label="full scan at once")
    ax_p.set_xlabel("frames taken")
    ax_p.set_ylabel("true grains paired within 1°")
    ax_p.set_ylim(0, 1.05)
    ax_p.legend(loc="lower right")
    ax_d.set_xlabel("frames taken")
    ax_d.set_ylabel("mean δ_GB of the paired grains (µm)")
    ax_d.legend()
    fig.suptitle(f"Live grain map, D35-like scan ({n_true} grains; dashed: decision "
                 "'enough')", fontsize=10)
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--diameter", type=float, default=0.12, help="sample diameter, mm")
    p.add_argument("--height", type=float, default=0.12, help="sample height, mm")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--every", type=int, default=20, help="frames between updates")
    p.add_argument("--cache", default=None, help="folder of the simulated frames and truth")
    p.add_argument("--orders", default="coarse-first,sequential")
    p.add_argument("--figure", default=None, help="PNG of the two orders")
    p.add_argument("--no-full", action="store_true",
                   help="skip the reconstruction of the full scan at once (compare with the "
                        "truth only)")
    args = p.parse_args()

    t0 = time.perf_counter()
    frames, geometry, spec, truth, voxel = simulated_scan(args)
    print(json.dumps({"frames": len(frames), "grains_true": truth.n_grains,
                      "simulate_s": round(time.perf_counter() - t0, 1)}), flush=True)
    t1 = time.perf_counter()
    full_map, full_acc = truth, {"paired": truth.n_grains, "false": 0, "delta_gb_um": None}
    if not args.no_full:
        scan = ScanData(frames, geometry.omegas, geometry, spec.material,
                        SampleEnvelope(spec.diameter, spec.height),
                        extra={"voxel_size": voxel, "n_grains": truth.n_grains})
        full_map = reconstruct(scan, ReconstructionOptions(voxel_size=voxel)).grainmap
        full_acc = accuracy(truth, full_map)
        print(json.dumps({"full_scan": full_acc, "n_grains": int(full_map.n_grains),
                          "reconstruct_s": round(time.perf_counter() - t1, 1)}), flush=True)
    summaries = [run_order(order, frames, geometry, spec, truth, voxel, full_map, args)
                 for order in args.orders.split(",")]
    for s in summaries:
        e = s["enough"]
        print(json.dumps({"order": s["order"], "enough_at_frames": s["enough_at_frames"],
                          "paired_at_enough": None if e is None else e["paired"],
                          "false_at_enough": None if e is None else e["false"],
                          "delta_gb_at_enough_um": None if e is None else e["delta_gb_um"],
                          "paired_with_full_scan_map": None if e is None else e["vs_full"],
                          "full_scan": full_acc, "grains_true": truth.n_grains,
                          "time_s": round(s["time_s"], 1)}), flush=True)
    if args.figure:
        figure(summaries, truth.n_grains, full_acc["delta_gb_um"], args.figure)


if __name__ == "__main__":
    main()
