"""Raise the exposure when the map suffers: the quality plan on a noisy simulated scan.

An 8-grain Al sample (0.1 x 0.1 mm), 37 projections of ``--detector``² (2032) at 10°, with
the detector's background (919 counts/s) and Poisson noise, segmented live by ``--method``
(the shipped U-Net; the routine's defaults segment too much of these frames); the live grain
map (binned ``--bin`` x ``--bin``, 8) updates every 5 frames, the exposure monitor advises
the exposure for a median spot SNR of ``--target-snr``, and the end-of-scan hook
reconstructs and compares with the simulator's grain map. Three scans on the real RunEngine
and an embedded catalog:

``adaptive``
    ``quality_scan`` from the short exposure ``--exposure``: it acts on the live map's
    decision (``raise exposure``: the monitor's advice, at most ``--max-exposure``, and the
    frames taken before are taken again; ``enough``: stop).
``short``
    ``labdct_scan`` at ``--exposure`` throughout.
``long``
    ``labdct_scan`` at ``--max-exposure`` throughout.

As in tests/test_live_grainmap.py, the quality source waits for each update (every fifth
frame) as exposures of minutes would let it. Prints one JSON line per scan (decisions,
exposures, frames, counting time, the final map against the truth) and a table.

    python benchmarks/raise_exposure_study.py [--exposure 1] [--max-exposure 16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from labdct_live.acquisition.detector import LabDCTDetector, make_rotation_stage, scaled_geometry
from labdct_live.acquisition.plans import labdct_scan, quality_scan
from labdct_live.callbacks.live_grainmap import LiveMapSettings
from labdct_live.callbacks.scan_quality import DecisionRule
from labdct_live.grains.formats.gm3d import write_gm3d
from labdct_live.live.session import LiveSession
from labdct_live.reconstruction import ReconstructionOptions
from labdct_live.segmentation.routine import RoutineParams
from labdct_live.simulation.forward import Simulator
from labdct_live.simulation.geometry import Geometry
from labdct_live.simulation.microstructure import SampleSpec, make_sample
from labdct_live.simulation.scanfolder import grainmap_of

SPEC = SampleSpec("Al", 0.1, 0.1, n_grains=8, name="raise-exposure")
OPTIONS = ReconstructionOptions(seed=0)
ROUTINE = RoutineParams(window=5, sigma=1.0, min_size=3)


def run_scan(kind: str, args, sample, reference: Path) -> dict:
    """One scan of ``kind`` (``adaptive``, ``short`` or ``long``); its figures."""
    geometry = scaled_geometry(Geometry(n_projections=37, omega_step=10.0),
                               (args.detector, args.detector))
    settings = LiveMapSettings(every=5, min_frames=8, bin=args.bin, options=OPTIONS,
                               rule=DecisionRule(min_frames=15, max_gap=25.0))
    events: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        options = {"routine_params": ROUTINE} if args.method == "routine" else {}
        session = LiveSession(tmp, method=args.method, method_options=options,
                              target_snr=args.target_snr, export_formats=(),
                              reference=reference, reconstruct=OPTIONS, reconstruct_bin=args.bin,
                              live_map=settings, report=lambda _: None).open()
        try:
            live, seen = session.live_grainmap, {}

            def record(name, doc):
                if name == "start":
                    seen["uid"] = doc["uid"]
                if name == "event":
                    data = doc["data"]
                    events.append((float(data["rotation"]), float(data["labdct_exposure"])))

            session.RE.subscribe(record)

            def quality():
                n, uid = len(events), seen["uid"]
                if n % 5 == 0 and n >= settings.min_frames:  # the map catches up
                    live.wait_for_update(uid, after=len(live.history.get(uid, [])),
                                         timeout=300)
                return live.latest(uid)

            rotation = make_rotation_stage()
            exposure = args.max_exposure if kind == "long" else args.exposure
            detector = LabDCTDetector(simulator=Simulator(sample, geometry), rotation=rotation,
                                      write_dir=session.raw_dir, seed=1, exposure=exposure)
            t0 = time.perf_counter()
            if kind == "adaptive":
                plan = quality_scan(detector, rotation, quality, start=-180, stop=180, step=10,
                                    exposure=exposure, stride=8, max_exposure=args.max_exposure)
            else:
                plan = labdct_scan(detector, rotation, start=-180, stop=180, step=10,
                                   exposure=exposure)
            (uid,) = session.RE(plan)
            session.wait(1800)
            wall = time.perf_counter() - t0
            history = live.history.get(uid, [])
            result = session.end_of_scan.results.get(uid, {})
            comparison = result.get("comparison", {})
            counts = comparison.get("counts", {})
            exposures = [e for _, e in events]
            return {
                "scan": kind, "frames": len(events),
                "distinct_omegas": len({round(w, 3) for w, _ in events}),
                "exposures": sorted(set(exposures)), "counting_time_s": float(sum(exposures)),
                "decisions": [q.decision for q in history],
                "advised": [None if q.advised_exposure is None else round(q.advised_exposure, 2)
                            for q in history],
                "median_completeness": [round(q.completeness_median, 3) for q in history],
                "explained": [round(q.spots_explained, 3) for q in history],
                "final_grains": result.get("reconstruction", {}).get("n_grains"),
                "final_error": result.get("reconstruction", {}).get("error"),
                "paired": counts.get("one_to_one"), "false": counts.get("false_positive"),
                "reference": counts.get("reference"),
                "delta_gb_um": comparison.get("delta_gb", {}).get("mean_um"),
                "wall_s": round(wall, 1),
            }
        finally:
            session.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exposure", type=float, default=1.0, help="short exposure, s")
    ap.add_argument("--max-exposure", type=float, default=16.0, help="long exposure, s")
    ap.add_argument("--target-snr", type=float, default=4.0)
    ap.add_argument("--scans", default="adaptive,short,long")
    ap.add_argument("--method", default="dl", choices=("dl", "routine"))
    ap.add_argument("--detector", type=int, default=2032, help="detector pixels (square)")
    ap.add_argument("--bin", type=int, default=8, help="binning of the live and final maps")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; 8 Al grains, 37 x "
          f"{args.detector}² ({args.method}, maps binned {args.bin}x{args.bin}), "
          f"exposure {args.exposure:g} s (long {args.max_exposure:g} s), target SNR "
          f"{args.target_snr:g}")
    sample = make_sample(SPEC, seed=3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        reference = Path(tmp) / "truth.h5"
        write_gm3d(reference, grainmap_of(sample))
        for kind in args.scans.split(","):
            row = run_scan(kind, args, sample, reference)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| scan | frames | counting time | decisions | paired / 8 | false | mean δ_GB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        dgb = "-" if r["delta_gb_um"] is None else f"{r['delta_gb_um']:.2f} µm"
        print(f"| {r['scan']} | {r['frames']} | {r['counting_time_s']:.0f} s | "
              f"{', '.join(r['decisions']) or '-'} | {r['paired']} | {r['false']} | {dgb} |")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
