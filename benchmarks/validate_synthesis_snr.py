"""SNR distribution of synthetic training inputs against the paper's range (0.1 to 28, Fig. S1).

    python benchmarks/validate_synthesis_snr.py [--projections 3] [--pairs 4] [--varied 3]
        [--cache DIR] [--png docs/img/synthesis_snr_hist.png]

Simulates (or reuses from ``--cache``) projections of D18, D35 and D64 at the paper's
geometry plus ``--varied`` random acquisitions, makes ``--pairs`` full-frame pairs from each
(procedural background, Eq. 1-2 noise, the default :class:`SynthesisConfig`), measures the
SNR of every ground-truth spot with :func:`labdct_live.segmentation.snr.spot_snr` (beam stop
excluded)
and prints the distribution overall and per acquisition; saves a histogram.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

PAPER_RANGE = (0.1, 28.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projections", type=int, default=3, help="per acquisition")
    parser.add_argument("--pairs", type=int, default=4, help="pairs per projection")
    parser.add_argument("--varied", type=int, default=3, help="random acquisitions")
    parser.add_argument("--cache", type=Path, default=None, help="projection cache to reuse")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", type=Path, default=Path("docs/img/synthesis_snr_hist.png"))
    args = parser.parse_args()

    from labdct_live.segmentation.snr import spot_snr
    from labdct_live.simulation.background import background_for_geometry
    from labdct_live.training.acquisitions import paper_acquisitions, varied_acquisitions
    from labdct_live.training.cache import ProjectionCache, build_projection_cache
    from labdct_live.training.synthesis import SynthesisConfig, make_pair

    t0 = time.perf_counter()
    if args.cache is not None and (args.cache / "index.json").exists():
        cache = ProjectionCache(args.cache)
    else:
        directory = args.cache or Path(tempfile.mkdtemp(prefix="snr-cache-"))
        acquisitions = paper_acquisitions(("D18", "D35", "D64"), args.seed)
        acquisitions += varied_acquisitions(args.varied, args.seed)
        cache = build_projection_cache(directory, acquisitions, args.projections, seed=args.seed)
    config = SynthesisConfig()
    per_acq: dict[str, list[np.ndarray]] = {}
    for i in range(len(cache)):
        proj = cache[i]
        geometry = proj.geometry
        exclude = geometry.beamstop_mask() if geometry.has_beamstop else None
        for j in range(args.pairs):
            rng = np.random.default_rng([args.seed, i, j])  # independent of other pairs
            background = background_for_geometry(geometry, int(rng.integers(2**31))).render()
            pair = make_pair(proj.clean, proj.labels, background, beamstop=exclude,
                             config=config, seed=rng)
            snr = spot_snr(pair.input, proj.labels, exclude=exclude)["snr"].to_numpy()
            per_acq.setdefault(proj.meta["acquisition"]["name"], []).append(snr[np.isfinite(snr)])
    elapsed = time.perf_counter() - t0

    def describe(values: np.ndarray) -> str:
        p = np.percentile(values, [1, 5, 25, 50, 75, 95, 99])
        inside = np.mean((values >= PAPER_RANGE[0]) & (values <= PAPER_RANGE[1]))
        return (f"n={values.size:6d}  p1 {p[0]:6.2f}  p5 {p[1]:6.2f}  p25 {p[2]:5.2f}  "
                f"median {p[3]:5.2f}  p75 {p[4]:5.2f}  p95 {p[5]:6.2f}  p99 {p[6]:6.2f}  "
                f"in [0.1, 28]: {100 * inside:4.1f} %  < 0.1: "
                f"{100 * np.mean(values < PAPER_RANGE[0]):4.1f} %  > 28: "
                f"{100 * np.mean(values > PAPER_RANGE[1]):4.1f} %")

    print(f"SNR of ground-truth spots in synthetic inputs (median_snr_range "
          f"{config.median_snr_range}, I0 {config.i0}, tau {config.tau}); "
          f"{len(cache)} projections x {args.pairs} pairs, {elapsed:.0f} s")
    for name, values in per_acq.items():
        print(f"  {name:28s} {describe(np.concatenate(values))}")
    groups = {"paper geometry": [n for n in per_acq if not n.startswith("varied")],
              "varied": [n for n in per_acq if n.startswith("varied")]}
    for label, names in groups.items():
        if names:
            print(f"  {label:28s} "
                  f"{describe(np.concatenate([v for n in names for v in per_acq[n]]))}")
    everything = np.concatenate([v for vals in per_acq.values() for v in vals])
    print(f"  {'all':28s} {describe(everything)}")
    print("  paper (Fig. S1): 0.1 to 28")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positive = everything[everything > 0]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    bins = np.logspace(-2, 2.5, 60)
    ax.hist(positive, bins=bins, color="0.35")
    for x in PAPER_RANGE:
        ax.axvline(x, color="tab:red", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("spot SNR (§8, ground-truth masks)")
    ax.set_ylabel("spots")
    ax.set_title(f"synthetic inputs: {everything.size} spots "
                 f"({100 * np.mean(everything <= 0):.0f} % with SNR <= 0 not shown)",
                 fontsize=9)
    ax.text(PAPER_RANGE[1], ax.get_ylim()[1] * 0.9, " paper 0.1-28", color="tab:red",
            fontsize=8, va="top")
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png)
    print(f"histogram: {args.png}")


if __name__ == "__main__":
    main()
