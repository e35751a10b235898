"""Grain reconstruction of the real iron frames from each segmentation (docs/real-frames.md).

The frames are the public far-field LabDCT scan of pure iron (github.com/YubinZhang/
Indexing_ff_LabDCT_DBB, folder ``FF_LabDCT_pure_iron/``). They have no licence: keep them
local and commit nothing derived from them but aggregate numbers. The folder is read from
``LABDCT_REAL_DATA``; without it the script says so and exits 0.

Each segmentation of ``benchmarks/real_frames.py`` (its functions, imported) is reconstructed
by :func:`labdct_live.reconstruction.reconstruct` in the geometry of
``docs/examples/iron_ff_labdct.yaml``, and one JSON line is printed per segmentation: grains
found, their mean and median completeness, the null-test threshold, grains above 0.5,
time, voxels, load average. There is no ground truth: completeness is the only measure,
and the null test (ω-scrambled frames) says what chance reaches.

- ``dl``: the shipped U-Net, ``segment --method dl`` defaults;
- ``routine``: the standard routine, ``segment --method routine`` defaults;
- ``routine150``: the routine with ``--background 150 --sigma 1.5`` and the beam stop;
- ``threshold``: the best global threshold on the frame minus the stack median by the
  Friedel-consistent count (the sweep of ``real_frames.py``), beam stop excluded;
- ``model``: the checkpoint of ``--model`` (e.g. made by ``labdct-live adapt``) with the
  stack median as static background.

Usage::

    LABDCT_REAL_DATA=/path/to/FF_LabDCT_pure_iron \\
        python benchmarks/real_reconstruction.py [--methods threshold,dl,routine150]
        [--voxel-size 0.1] [--seed-spacing 0.25] [--omega-sign -1] [--json FILE]
    python benchmarks/real_reconstruction.py --simulated      # no real frames needed

The masks are cached (``--cache``, default /tmp/labdct_real_recon, never inside the
repository), so a second run with other reconstruction settings does not segment again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_frames import (  # noqa: E402
    DEFAULT_INSTRUMENT,
    ENV,
    ROOT,
    THRESHOLDS,
    dl_masks,
    load_frames,
    model_masks,
    routine_masks,
    threshold_masks,
)

from labdct_live.reconstruction import (  # noqa: E402
    LowCompletenessWarning,
    ReconstructionOptions,
    SampleEnvelope,
    ScanData,
    SearchSettings,
    reconstruct,
)
from labdct_live.segmentation.consistency import score_scan  # noqa: E402
from labdct_live.segmentation.friedel import friedel_mirror  # noqa: E402
from labdct_live.simulation.geometry import Geometry  # noqa: E402
from labdct_live.simulation.instrument import load_instrument  # noqa: E402

# Numbers of the repository's parameter files (github.com/YubinZhang/Indexing_ff_LabDCT_DBB):
#: Energy band, keV: ``parameters.beam.E_min`` / ``E_max`` of parameter_2024_02_21.mat
#: (Indexing_FFLabDCT.m sets E_max = 110 again; input_main.m's 150 is the tube voltage).
E_MIN_KEV, E_MAX_KEV = 15.0, 110.0
#: Sample envelope, mm: refinegrain.m bounds every grain centre to |x|, |y|, |z| <= 0.5 mm
#: (and Indexing_FFLabDCT.m's ``delta = 0.5/100`` rad is the angle of a 0.5 mm offset at
#: 100 mm); no sample size is stated otherwise, so the cylinder circumscribes that bound.
SAMPLE_DIAMETER_MM, SAMPLE_HEIGHT_MM = 1.0, 1.0
#: Expected grain diameter, mm. input_main.m's ``grainsize = 20`` (µm) only scales spot
#: intensities; 20 µm grains would fill the 1 mm envelope with ~10^5 grains, against the
#: ~300 real spots per frame (docs/real-frames.md) at 3.4 spots per grain and frame
#: (simulated Fe grains in this geometry): about 80 grains, 0.25 mm each in the envelope.
GRAIN_SIZE_MM = 0.25
METHODS = ("threshold", "dl", "routine", "routine150", "model")


def iron_geometry(instrument_file: str | Path = DEFAULT_INSTRUMENT
                  ) -> tuple[Geometry, np.ndarray]:
    """Geometry and rotation angles of the instrument file, with the band of the parameters.

    Parameters
    ----------
    instrument_file : str or Path
        An instrument file (:func:`labdct_live.simulation.instrument.load_instrument`).

    Returns
    -------
    geometry : Geometry
        The file's geometry with ``kvp = E_MAX_KEV + 2``: the reconstruction's band ends at
        ``kvp - 2`` (:attr:`ScanData.e_max`), and the parameter file ends it at 110 keV.
    omegas : ndarray
        Rotation angle of every frame, degrees, in frame order.
    """
    instrument = load_instrument(instrument_file)
    return replace(instrument.geometry, kvp=E_MAX_KEV + 2.0), instrument.omegas


def _outside_repo(path: Path) -> Path:
    path = path.resolve()
    if path == ROOT or ROOT in path.parents:
        raise SystemExit(f"{path} lies in the repository: masks derived from the real frames "
                         "must not be committed; choose a folder outside it")
    return path


def best_threshold(residual: np.ndarray, omegas: np.ndarray, geometry: Geometry,
                   exclude: np.ndarray) -> tuple[int, list[np.ndarray]]:
    """The threshold of ``real_frames.THRESHOLDS`` with most Friedel-consistent spots."""
    mirror = friedel_mirror(geometry)
    best: tuple[float, int, list[np.ndarray]] = (-1.0, 0, [])
    for thr in THRESHOLDS:
        masks = threshold_masks(residual, thr, exclude, 3)
        consistent = score_scan(masks, omegas, mirror,
                                exclude=exclude).summary.consistent_per_frame
        if consistent > best[0]:
            best = (consistent, thr, masks)
    return best[1], best[2]


def segment(method: str, frames: np.ndarray, omegas: np.ndarray, geometry: Geometry,
            model: str | None) -> tuple[str, np.ndarray]:
    """A label for the segmentation and its masks, ``(n, H, W)`` bool."""
    exclude = geometry.beamstop_mask()
    if method == "dl":
        return "shipped U-Net (dl defaults)", np.stack(dl_masks(frames, None))
    if method == "routine":
        return "routine (defaults)", np.stack(routine_masks(frames, None))
    if method == "routine150":
        return "routine --background 150 --sigma 1.5, beam stop", np.stack(
            routine_masks(frames, exclude, background=150.0, sigma=1.5))
    median = np.median(frames, axis=0).astype(np.float32)
    if method == "model":
        if model is None:
            raise SystemExit("--methods model needs --model FILE")
        return f"U-Net {Path(model).name}, stack median", np.stack(
            model_masks(frames, model, exclude, median))
    thr, masks = best_threshold(frames.astype(np.float32) - median, omegas, geometry, exclude)
    return f"best global threshold (T = {thr}, >= 3 px)", np.stack(masks)


def cached_masks(method: str, cache: Path, frames: np.ndarray, omegas: np.ndarray,
                 geometry: Geometry, model: str | None) -> tuple[str, np.ndarray, float]:
    """Masks of ``method`` from ``cache`` or segmented now; also the segmenting time (s)."""
    name = method if method != "model" else f"model_{Path(str(model)).stem}"
    path = cache / f"{name}.npz"
    if path.is_file():
        with np.load(path) as d:
            masks = np.unpackbits(d["masks"], axis=-1, count=frames.shape[2]).astype(bool)
            return str(d["label"]), masks, float(d["seconds"])
    t = time.perf_counter()
    label, masks = segment(method, frames, omegas, geometry, model)
    masks = masks > 0  # some segmenters return label images
    seconds = time.perf_counter() - t
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, masks=np.packbits(masks, axis=-1), label=label, seconds=seconds)
    return label, masks, seconds


def reconstruct_masks(label: str, masks: np.ndarray, omegas: np.ndarray, geometry: Geometry,
                      options: ReconstructionOptions) -> tuple[dict, np.ndarray]:
    """Reconstruct one segmentation: the aggregate figures (JSON-ready) and the grains'
    orientation matrices, ``(n, 3, 3)``."""
    scan = ScanData(masks, omegas, geometry, "Fe",
                    SampleEnvelope(SAMPLE_DIAMETER_MM, SAMPLE_HEIGHT_MM), e_min=E_MIN_KEV,
                    source=f"real iron frames, {label}")
    load_before = os.getloadavg()
    t = time.perf_counter()
    cpu = time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LowCompletenessWarning)
        result = reconstruct(scan, options)
    seconds = time.perf_counter() - t
    grains = result.grains
    comp = grains["completeness"].to_numpy(float)
    radius = np.hypot(grains["x"].to_numpy(float), grains["y"].to_numpy(float))
    stats = result.stats
    row = {
        "segmentation": label,
        "spot_pixels_per_frame": round(float(masks.sum((1, 2)).mean()), 1),
        "grains": int(len(grains)),
        "mean_completeness": round(float(comp.mean()), 3) if comp.size else None,
        "median_completeness": round(float(np.median(comp)), 3) if comp.size else None,
        "grains_completeness_ge_0.5": int(np.sum(comp >= 0.5)),
        "mean_voxel_completeness": round(float(grains["voxel_completeness"].mean()), 3)
        if comp.size else None,
        "threshold": round(result.threshold, 3),
        "null_completeness": [round(float(v), 3) for v in result.null_completeness],
        "median_spots_predicted": float(np.median(grains["spots_predicted"]))
        if comp.size else None,
        "grain_diameter_mm_median": round(float(grains["diameter"].median()), 3)
        if comp.size else None,
        "grain_centre_radius_mm_median_max": [round(float(np.median(radius)), 3),
                                              round(float(radius.max()), 3)]
        if comp.size else None,
        "seeds_searched": stats["n_searched_seeds"],
        "voxels": stats["n_voxels"], "voxel_size_mm": stats["voxel_size"],
        "grain_size_mm": stats["grain_size"],
        "reconstruct_s": round(seconds, 1),
        "reconstruct_cpu_s": round(time.process_time() - cpu, 1),
        "stage_s": {k[5:]: round(v, 1) for k, v in stats.items() if k.startswith("time_")},
        "warning": str(caught[-1].message) if caught else None,
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    return row, result.grainmap.orientations[1:]


def agreement(orientations: dict[str, np.ndarray], angle: float = 1.0) -> dict[str, list[int]]:
    """For each ordered pair of segmentations (a, b): grains of a with a grain of b within
    ``angle`` degrees, and grains of a. Without ground truth, grains that segmentations made
    by different methods agree on are unlikely to be chance."""
    from labdct_live.reconstruction import misorientation_deg

    out = {}
    for a, ua in orientations.items():
        for b, ub in orientations.items():
            if a == b:
                continue
            near = (misorientation_deg(ua[:, None], ub[None]).min(axis=1) <= angle
                    if len(ua) and len(ub) else np.zeros(len(ua), bool))
            out[f"{a} in {b}"] = [int(near.sum()), len(ua)]
    return out


def simulated_check(geometry: Geometry, omegas: np.ndarray, omega_sign: float,
                    n_grains: int = 8, seed: int = 3) -> dict:
    """Reconstruct noise-free frames of random Fe grains simulated in this geometry.

    Validates the reconstruction's conventions on this far-field geometry without the real
    frames: the simulator and the reconstruction share the geometry, so every grain must be
    found with ω as simulated, and none with ``omega_sign = -1`` (the wrong sense).
    """
    from labdct_live.grains.compare.comparison import compare_grainmaps
    from labdct_live.reconstruction import misorientation_deg
    from labdct_live.simulation.forward import Simulator
    from labdct_live.simulation.microstructure import SampleSpec, make_sample
    from labdct_live.simulation.scanfolder import grainmap_of

    diameter = 0.3  # mm: 8 grains of ~0.17 mm (the real ones ~0.25 mm), quick to trace
    sample = make_sample(SampleSpec("Fe", diameter, diameter, n_grains=n_grains,
                                    voxel_size=0.01), seed=seed)
    sim = Simulator(sample, geometry)
    frames = np.empty((len(omegas),) + geometry.detector_shape, dtype=bool)
    spots = 0
    for k, omega in enumerate(omegas):
        projection = sim.project(float(omega))
        frames[k] = projection.labels > 0
        spots += len(projection.spots)
    scan = ScanData(frames, omega_sign * omegas, geometry, "Fe",
                    SampleEnvelope(diameter, diameter), e_min=E_MIN_KEV,
                    source="simulated Fe grains in the real scan's geometry")
    truth = grainmap_of(sample)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LowCompletenessWarning)
        result = reconstruct(scan, ReconstructionOptions(voxel_size=0.02, grain_size=0.17))
    found = result.grainmap.n_grains
    row = {"segmentation": f"simulated, {n_grains} Fe grains, noise-free masks",
           "omega_sign": omega_sign,
           "spots_per_frame_per_grain": round(spots / len(omegas) / n_grains, 2),
           "grains": int(found), "threshold": round(result.threshold, 3),
           "median_completeness": round(float(result.grains["completeness"].median()), 3)
           if found else None,
           "reconstruct_s": round(time.perf_counter() - t, 1)}
    if found:
        row["counts"] = compare_grainmaps(truth, result.grainmap, resample=True).counts()
        mis = misorientation_deg(result.grainmap.orientations[1:][:, None],
                                 truth.orientations[truth.grain_list][None]).min(axis=0)
        row["max_misorientation_deg"] = round(float(mis.max()), 3)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instrument", default=str(DEFAULT_INSTRUMENT))
    p.add_argument("--methods", default="threshold,dl,routine150",
                   help=f"comma-separated, of {', '.join(METHODS)} (default "
                        "threshold,dl,routine150; the routine's default masks cover a "
                        "quarter of the frame and did not finish in 15 min)")
    p.add_argument("--model", default=None, help="checkpoint for --methods model")
    p.add_argument("--voxel-size", type=float, default=0.1,
                   help="mm (default 0.1: four tenths of the grain size, a first answer)")
    p.add_argument("--grain-size", type=float, default=GRAIN_SIZE_MM,
                   help=f"expected grain diameter, mm (default {GRAIN_SIZE_MM})")
    p.add_argument("--seed-spacing", type=float, default=GRAIN_SIZE_MM,
                   help=f"mm (default {GRAIN_SIZE_MM}: one grain size, about 100 seeds; the "
                        "reconstruction's own default, half of it, searches 8 times as many)")
    p.add_argument("--tilt", default=None, metavar="A,B,C",
                   help="detector tilt (Geometry.tilt, degrees) instead of the file's; the "
                        "parameter file's full matrix is -0.005,-2.062,0.242 in this "
                        "package's convention")
    p.add_argument("--tol-px", type=float, default=SearchSettings.tol_px,
                   help="hit tolerance, px (default: the reconstruction's)")
    p.add_argument("--omega-sign", type=float, choices=(1.0, -1.0), default=-1.0,
                   help="multiply the file's ω by this (default -1: see docs/real-frames.md, "
                        "'Grain reconstruction of the real frames')")
    p.add_argument("--cache", default="/tmp/labdct_real_recon",
                   help="folder for the masks (outside the repository)")
    p.add_argument("--json", default=None, help="append the lines to this file")
    p.add_argument("--simulated", action="store_true",
                   help="only the check on simulated grains in this geometry, with ω as "
                        "simulated and reversed (no real frames needed)")
    args = p.parse_args(argv)
    if args.simulated:
        geometry, omegas = iron_geometry(args.instrument)
        for sign in (1.0, -1.0):
            print(json.dumps(simulated_check(geometry, omegas, sign)), flush=True)
        return 0

    folder = os.environ.get(ENV)
    if not folder or not Path(folder).is_dir():
        print(f"skipped: set {ENV} to the FF_LabDCT_pure_iron folder of "
              "github.com/YubinZhang/Indexing_ff_LabDCT_DBB (frames are not shipped)")
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    cache = _outside_repo(Path(args.cache))
    geometry, omegas = iron_geometry(args.instrument)
    if args.tilt:
        geometry = replace(geometry, tilt=tuple(float(v) for v in args.tilt.split(",")))
    frames = load_frames(Path(folder))
    if frames.shape[1:] != geometry.detector_shape or len(frames) != len(omegas):
        raise SystemExit(f"{folder}: {len(frames)} frames of {frames.shape[1:]} do not match "
                         f"{args.instrument}")
    options = ReconstructionOptions(voxel_size=args.voxel_size, grain_size=args.grain_size,
                                    seed_spacing=args.seed_spacing,
                                    search=SearchSettings(tol_px=args.tol_px))
    found = {}
    for method in methods:
        # segmentation scores Friedel pairs on the file's ω; only the reconstruction's sense
        # of rotation is in question
        label, masks, seg_s = cached_masks(method, cache, frames, omegas, geometry,
                                           args.model)
        row, found[method] = reconstruct_masks(label, masks, args.omega_sign * omegas,
                                               geometry, options)
        row.update(method=method, omega_sign=args.omega_sign, tol_px=args.tol_px,
                   tilt_deg=list(geometry.tilt),
                   segment_s=round(seg_s, 1))
        line = json.dumps(row)
        print(line, flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(line + "\n")
    if len(found) > 1:
        print(json.dumps({"grains_within_1deg_of_a_grain_of": agreement(found)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
