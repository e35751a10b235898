"""Grain maps from noisy segmentations: the U-Net against the standard routine and the truth.

    python benchmarks/grainmap_study.py --cache /tmp/gm_cache --out /tmp/gm_study
    python benchmarks/grainmap_study.py --preset Fe-exp --cache /tmp/gm_cache --out /tmp/gm_study
    python benchmarks/grainmap_study.py --diameter 0.2 --height 0.3 ...     # full D35 (slow)

Simulates a held-out sample (default: the D35 preset's grain size, material and geometry
reduced to 0.12 x 0.12 mm, as bench_reconstruction.py does; ``--preset Fe-exp`` likewise) with
``--projections`` frames on the 2032² paper detector, made noisy by Eq. 1-2 exactly as
validate_dl.py does (median spot SNR ``--median-snr``). Every frame is segmented by

- ``truth``: the simulator's noise-free spot masks (the upper bound),
- ``unet``: the shipped U-Net (denoise, threshold 0.3 calibrated by validate_dl.py),
- ``tuned``: the standard routine with the tuned parameters,
- ``paper``: the standard routine with the paper's (public-code) parameters.

Each segmentation is binned 2x2 by OR (``--bin``; the geometry binned with it) and
reconstructed by :func:`labdct_live.reconstruction.reconstruct`, and the grain map is compared
with the truth (:func:`labdct_live.grains.compare.comparison.compare_grainmaps`). Prints one
JSON line per segmentation; writes the comparison reports (Table 2, size and δ_GB plots, the
δ_GB ratio routine / U-Net) and ``ratios.png`` (reconstructed / true grain size and the δ_GB
ratio against the true grain size) into ``--out/<sample>/``.

``--cache DIR`` keeps the noisy frames with their truth masks (one uncompressed .npz, 1.5 GB
for 181 frames), the true grain map (.h5) and each segmentation (bit-packed .npz), so a rerun
neither simulates nor segments again.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from validate_dl import TUNED, scan_geometry  # noqa: E402
from validate_routine import noisy_scan  # noqa: E402

from labdct_live.acquisition.detector import scaled_geometry  # noqa: E402
from labdct_live.grains.compare.comparison import (  # noqa: E402
    Comparison,
    compare_grainmaps,
    delta_gb_ratio,
)
from labdct_live.grains.compare.pairing import CLASS_FALSE_NEGATIVE  # noqa: E402
from labdct_live.grains.compare.report import write_report  # noqa: E402
from labdct_live.grains.formats.gm3d import read_gm3d, write_gm3d  # noqa: E402
from labdct_live.grains.grainmap import GrainMap  # noqa: E402
from labdct_live.models.inference import Denoiser  # noqa: E402
from labdct_live.reconstruction import (  # noqa: E402
    ReconstructionOptions,
    SampleEnvelope,
    ScanData,
    SearchSettings,
    reconstruct,
)
from labdct_live.reconstruction.data import bin_frames as bin_or  # noqa: E402
from labdct_live.segmentation.rolling_median import RollingMedianSubtractor  # noqa: E402
from labdct_live.segmentation.routine import RoutineParams, segment_corrected  # noqa: E402
from labdct_live.segmentation.threshold import threshold_segment  # noqa: E402
from labdct_live.simulation.microstructure import SampleSpec, make_sample  # noqa: E402
from labdct_live.simulation.scanfolder import grainmap_of  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = ROOT / "labdct_live" / "models" / "weights" / "compact_s4.pt"

#: The shipped model's threshold, calibrated for F1 by validate_dl.py on a separate D35 scan.
UNET_THRESHOLD = 0.3

#: Held-out sample seeds of validate_dl.py's scans (not in the training data).
HELD_OUT_SEED = {"D35": 2, "Fe-exp": 3}

#: The segmentations, in the order they are run and reported.
METHODS = ("truth", "unet", "tuned", "paper")
LABELS = {"truth": "noise-free masks", "unet": "U-Net", "tuned": "routine, tuned",
          "paper": "routine, paper params"}


def reduced_spec(name: str, diameter: float, height: float,
                 projections: int) -> tuple[SampleSpec, object]:
    """A preset's sample cut to ``diameter`` x ``height`` mm (same grain size) and geometry.

    The grain count follows the volume, as in bench_reconstruction.py; the voxel size stays
    the preset's.
    """
    spec, geometry = scan_geometry(name, projections)
    full = np.pi * (spec.diameter / 2) ** 2 * spec.height
    volume = np.pi * (diameter / 2) ** 2 * height
    n_grains = max(1, int(round(spec.grain_count * volume / full)))
    spec = replace(spec, diameter=diameter, height=height, n_grains=n_grains,
                   voxel_size=spec.resolved_voxel_size, name=f"{name}-like")
    return spec, geometry


def _save_mask(path: Path, mask: np.ndarray) -> None:
    np.savez_compressed(path, mask=np.packbits(mask, axis=-1), cols=mask.shape[-1])


def _load_mask(path: Path) -> np.ndarray:
    with np.load(path) as f:
        return np.unpackbits(f["mask"], axis=-1, count=int(f["cols"])).astype(bool)


def simulate(spec: SampleSpec, geometry, seed: int, median_snr: float,
             stem: Path | None) -> tuple[np.ndarray, np.ndarray, GrainMap]:
    """The noisy uint16 frames, their truth masks and the true grain map (cached in ``stem``).

    The noise seed is ``101 * seed``, validate_dl.py's for a held-out scan.
    """
    # not Path.with_suffix: the stem's "snr2.5" would lose its ".5"
    npz, h5 = (None, None) if stem is None else (Path(f"{stem}.npz"), Path(f"{stem}.h5"))
    if npz is not None and npz.is_file():
        with np.load(npz) as f:
            noisy = f["noisy"]
            truth = np.unpackbits(f["truth"], axis=-1, count=noisy.shape[-1]).astype(bool)
        return noisy, truth, read_gm3d(h5)
    n = geometry.n_projections
    noisy = np.empty((n,) + geometry.detector_shape, dtype=np.uint16)
    truth = np.empty((n,) + geometry.detector_shape, dtype=bool)
    for i, frame, labels in tqdm(noisy_scan(spec, geometry, seed, 101 * seed, median_snr),
                                 total=n, desc="simulate", unit="frame"):
        noisy[i], truth[i] = frame, labels > 0
    grainmap = grainmap_of(make_sample(spec, seed=seed))
    if npz is not None:
        npz.parent.mkdir(parents=True, exist_ok=True)
        np.savez(npz, noisy=noisy, truth=np.packbits(truth, axis=-1))
        write_gm3d(h5, grainmap)
    return noisy, truth, grainmap


def segment_unet(noisy: np.ndarray, model: str | Path, threshold: float,
                 exclude: np.ndarray, threads: int) -> np.ndarray:
    """U-Net masks as validate_dl.py makes them: denoise, one threshold, spots of ≥ 2 px."""
    denoiser = Denoiser(str(model), threads=threads)
    return np.stack([threshold_segment(denoiser(f), threshold, 2, exclude) > 0
                     for f in tqdm(noisy, desc="U-Net", unit="frame")])


def segment_routine(noisy: np.ndarray, params: Mapping[str, RoutineParams],
                    exclude: np.ndarray) -> dict[str, np.ndarray]:
    """Routine masks for each parameter set, sharing one pass of the rolling median."""
    masks = {k: np.empty(noisy.shape, dtype=bool) for k in params}
    median = RollingMedianSubtractor(11, circular=True, exclude=exclude)

    def segment(ready: list[tuple[int, np.ndarray]]) -> None:
        for j, corrected in ready:
            for k, p in params.items():
                masks[k][j] = segment_corrected(corrected, p, exclude)[0] > 0

    for frame in tqdm(noisy, desc="routine", unit="frame"):
        segment(median.push(frame))
    segment(median.finish())
    return masks


def segmentations(noisy: np.ndarray, truth: np.ndarray, exclude: np.ndarray, args,
                  stem: Path | None) -> Iterator[tuple[str, np.ndarray, float]]:
    """``(method, masks, seconds)`` for every method, from the cache when it is there."""
    runs: dict[str, Callable[[], dict[str, np.ndarray]]] = {
        "truth": lambda: {"truth": truth},
        "unet": lambda: {"unet": segment_unet(noisy, args.model, args.threshold, exclude,
                                              args.threads)},
        "tuned": lambda: segment_routine(noisy, {"tuned": TUNED, "paper": RoutineParams()},
                                         exclude),
    }
    runs["paper"] = runs["tuned"]  # both routines come from one rolling-median pass
    done: dict[str, tuple[np.ndarray, float]] = {}
    for method in args.methods:
        path = None if stem is None else Path(f"{stem}_seg_{method}.npz")
        if method not in done and path is not None and path.is_file():
            done[method] = (_load_mask(path), 0.0)
        elif method not in done:
            t = time.perf_counter()
            got = runs[method]()
            seconds = (time.perf_counter() - t) / len(got)  # the median pass is shared
            for k, mask in got.items():
                done[k] = (mask, seconds)
                if stem is not None and k != "truth":
                    _save_mask(Path(f"{stem}_seg_{k}.npz"), mask)
        yield method, *done[method]


def size_ratios(comp: Comparison) -> pd.DataFrame:
    """Per true grain paired: its ESD and reconstructed ESD (all partners) / true ESD."""
    ref, rec = comp.reference_grains, comp.reconstructed_grains
    paired = ref[ref["n_partners"] > 0]
    rec_esd = [float(np.cbrt((rec.loc[list(p), "esd_mm"] ** 3).sum())) for p in paired["partners"]]
    return pd.DataFrame({"esd_mm": paired["esd_mm"], "ratio": rec_esd / paired["esd_mm"]})


def plot_ratios(comparisons: Mapping[str, Comparison], title: str, path: Path) -> None:
    """Two panels against the true grain size: reconstructed / true ESD of every
    segmentation, and δ_GB(routine) / δ_GB(U-Net) of the grains both paired (Fig. 7)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    for method, comp in comparisons.items():
        r = size_ratios(comp)
        a.scatter(r["esd_mm"] * 1e3, r["ratio"], s=12, alpha=0.7, label=LABELS[method])
    a.axhline(1, color="k", lw=1, ls="--")
    a.set_xlabel("true grain ESD (µm)")
    a.set_ylabel("reconstructed / true ESD")
    a.legend(fontsize=7)
    if "unet" in comparisons:
        for method in ("tuned", "paper"):
            if method in comparisons:
                ratio, stats = delta_gb_ratio(comparisons[method], comparisons["unet"])
                b.scatter(ratio["esd_mm"] * 1e3, ratio["ratio"], s=12, alpha=0.7,
                          label=f"{LABELS[method]} (mean {stats['mean']:.2f})")
        b.legend(fontsize=7)
    b.axhline(1, color="k", lw=1, ls="--")
    b.set_xlabel("true grain ESD (µm)")
    b.set_ylabel("δ_GB(routine) / δ_GB(U-Net)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def summary(comp: Comparison, result, masks: np.ndarray, truth: np.ndarray) -> dict:
    """The JSON figures of one segmentation's grain map."""
    counts = comp.counts()
    ref = comp.reference_grains
    paired = ref["n_partners"] > 0
    mis = ref.loc[paired, "misorientation_deg"].to_numpy()
    dgb = ref.loc[paired, "delta_gb_mm"].to_numpy() * 1e3
    hit = np.count_nonzero(masks & truth)
    return {
        "counts": counts,
        "paired_fraction": round(float(paired.mean()), 4),
        "false_grains": counts["false_positive"],
        "split_true_grains": counts["one_to_multi"],
        "missed_esd_um": [round(v * 1e3, 1) for v in
                          ref.loc[ref["class"] == CLASS_FALSE_NEGATIVE, "esd_mm"]],
        "median_misorientation_deg": round(float(np.median(mis)), 4) if mis.size else None,
        "mean_delta_gb_um": round(float(np.nanmean(dgb)), 2) if dgb.size else None,
        "median_delta_gb_um": round(float(np.nanmedian(dgb)), 2) if dgb.size else None,
        "seeds": result.stats["n_searched_seeds"],
        "threshold": round(result.threshold, 3),
        "median_completeness": round(result.stats["median_completeness"], 3),
        "pixel_precision": round(hit / max(np.count_nonzero(masks), 1), 3),
        "pixel_recall": round(hit / max(np.count_nonzero(truth), 1), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="D35")
    p.add_argument("--diameter", type=float, default=0.12, help="sample diameter, mm")
    p.add_argument("--height", type=float, default=0.12, help="sample height, mm")
    p.add_argument("--projections", type=int, default=181)
    p.add_argument("--seed", type=int, default=None,
                   help="sample seed (default: validate_dl.py's held-out seed of the preset)")
    p.add_argument("--median-snr", type=float, default=2.5)
    p.add_argument("--model", default=str(SHIPPED_MODEL))
    p.add_argument("--threshold", type=float, default=UNET_THRESHOLD)
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated subset of {', '.join(METHODS)}")
    p.add_argument("--bin", type=int, default=2,
                   help="OR-bin the binary frames by this factor before reconstructing")
    p.add_argument("--options", default="{}", help="ReconstructionOptions as JSON")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default=None, help="folder for the simulated and segmented frames")
    p.add_argument("--out", required=True, help="report folder (outside the repository)")
    args = p.parse_args()
    args.methods = args.methods.split(",")
    if unknown := set(args.methods) - set(METHODS):
        p.error(f"unknown methods {sorted(unknown)}: choose from {', '.join(METHODS)}")
    seed = args.seed if args.seed is not None else HELD_OUT_SEED.get(args.preset, 1)

    spec, geometry = reduced_spec(args.preset, args.diameter, args.height, args.projections)
    name = f"{args.preset}_{args.diameter:g}x{args.height:g}_{args.projections}p_s{seed}"
    stem = None
    if args.cache:
        stem = Path(args.cache) / f"{name}_snr{args.median_snr:g}"
    t = time.perf_counter()
    noisy, truth, truth_map = simulate(spec, geometry, seed, args.median_snr, stem)
    t_sim = time.perf_counter() - t
    exclude = geometry.beamstop_mask()
    rows, cols = geometry.detector_shape
    binned = scaled_geometry(geometry, (rows // args.bin, cols // args.bin))
    truth_binned = bin_or(truth, args.bin)
    asked = json.loads(args.options)
    given = dict(asked)
    search = replace(SearchSettings(), **given.pop("search", {}))
    options = ReconstructionOptions(search=search, **given)
    out = Path(args.out) / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "command.txt").write_text("python " + shlex.join(sys.argv) + "\n")
    comparisons: dict[str, Comparison] = {}
    rows_out = []
    for method, masks, t_seg in segmentations(noisy, truth, exclude, args, stem):
        frames = bin_or(masks, args.bin)
        scan = ScanData(frames, geometry.omegas, binned, spec.material,
                        SampleEnvelope(spec.diameter, spec.height),
                        extra={"voxel_size": spec.voxel_size, "n_grains": spec.grain_count})
        t = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = reconstruct(scan, options)
        t_rec = time.perf_counter() - t
        t = time.perf_counter()
        comp = compare_grainmaps(truth_map, result.grainmap, resample=True,
                                 label=LABELS[method])
        t_cmp = time.perf_counter() - t
        comparisons[method] = comp
        row = {"sample": spec.name, "preset": args.preset, "diameter_mm": args.diameter,
               "height_mm": args.height, "seed": seed, "segmentation": method,
               "grains_true": truth_map.n_grains, "grains_found": result.grainmap.n_grains,
               **summary(comp, result, frames, truth_binned),
               "warnings": [str(w.message) for w in caught],
               "time_s": {"simulate": round(t_sim, 1), "segment": round(t_seg, 1),
                          "reconstruct": round(t_rec, 1), "compare": round(t_cmp, 1)},
               "detector": f"{rows}² segmented, {binned.detector_shape[0]}² reconstructed",
               "options": asked,
               "load_average": open("/proc/loadavg").read().split()[:3]}
        rows_out.append(row)
        print(json.dumps(row), flush=True)
        # outputs after every segmentation: a long run stopped early keeps what it measured
        for first, second in (("tuned", "unet"), ("paper", "unet"), ("unet", "truth")):
            if method in (first, second) and {first, second} <= comparisons.keys():
                write_report([comparisons[first], comparisons[second]],
                             out / f"{first}_vs_{second}")
        plot_ratios(comparisons, f"{spec.name} {args.diameter:g} x {args.height:g} mm, "
                    f"{truth_map.n_grains} grains, median spot SNR {args.median_snr:g}",
                    out / "ratios.png")
        (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_out))


if __name__ == "__main__":
    main()
