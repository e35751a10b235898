"""Run the speed benchmarks one after another and print their figures (``make bench``).

    python benchmarks/run_all.py [--validation] [--only NAME,NAME]

Each benchmark runs in its own process with the options its docs/performance.md entry gives,
so one crashing does not stop the others; a summary of exit codes and wall times closes the
run. ``--validation`` adds the science checks of docs/validation.md that take minutes to
about an hour (spot counts, the routine's tuning, the U-Net against the routine). Figures are
printed, not compared with thresholds: speed depends on the machine and its load, so compare
ratios within one run and copy the figures, with the machine, into docs/performance.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE.parent / "labdct_live" / "models" / "weights" / "compact_s4.pt"

SPEED = {
    "simulator": ["bench_simulator.py", "--reference", "D18"],
    "routine": ["bench_routine.py"],
    "synthesis": ["bench_synthesis.py"],
    "inference": ["bench_inference.py"],
    "compare": ["bench_compare.py", "--size", "300", "--grains", "500"],
    "live": ["bench_live.py", "--projections", "37", "--method", "dl"],
}
VALIDATION = {
    "spot_counts": ["spot_counts.py", "--projections", "19", "--seeds", "1,2"],
    "synthesis_snr": ["validate_synthesis_snr.py"],
    "routine_validation": ["validate_routine.py", "--out", "out/validate_routine"],
    "dl_validation": ["validate_dl.py", "--models", str(WEIGHTS), "--scans", "D35:2,Fe-exp:3",
                      "--eval-every", "12", "--out", "out/validate_dl"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--validation", action="store_true", help="also the science checks")
    ap.add_argument("--only", default=None, help="comma-separated names to run")
    args = ap.parse_args()
    jobs = dict(SPEED)
    if args.validation:
        jobs.update(VALIDATION)
    if shutil.which("initdb"):
        jobs["postgres"] = ["check_postgres.py", "--projections", "37"]
    if args.only:
        wanted = args.only.split(",")
        unknown = set(wanted) - set(jobs)
        if unknown:
            ap.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {sorted(jobs)}")
        jobs = {name: jobs[name] for name in wanted}
    summary = []
    for name, (script, *options) in jobs.items():
        print(f"\n===== {name}: python benchmarks/{script} {' '.join(options)}", flush=True)
        start = time.monotonic()
        code = subprocess.run([sys.executable, str(HERE / script), *options]).returncode
        summary.append((name, code, time.monotonic() - start))
    print("\n===== summary")
    for name, code, seconds in summary:
        print(f"{name:20s} {'ok' if code == 0 else f'FAILED ({code})':12s} {seconds:7.1f} s")
    return int(any(code for _, code, _ in summary))


if __name__ == "__main__":
    sys.exit(main())
