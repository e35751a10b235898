"""Speed of the forward simulator, as a ratio to a brute-force numpy reference in one run.

The reference traces every sub-point of every grain against every reflection (no candidate
selection, no numba), with the same physics and the same bilinear splat, so it also checks that
candidate selection loses no spot: the two clean images must agree.

    python benchmarks/bench_simulator.py [--samples D18,D35,D64] [--repeats 5] [--reference D18]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from scipy import ndimage

from labdct_live.simulation.forward import _COUNTS_PER_UNIT, Simulator
from labdct_live.simulation.microstructure import make_sample
from labdct_live.simulation.presets import preset

HC = 12.398419843


def reference_clean_image(sim: Simulator, omega: float, chunk: int = 200_000) -> np.ndarray:
    """Brute-force numpy forward model (no blur): all sub-points x all reflections."""
    g = sim.geometry
    rows, cols = g.detector_shape
    w = np.deg2rad(omega)
    rot = np.array([[np.cos(w), -np.sin(w), 0], [np.sin(w), np.cos(w), 0], [0, 0, 1]])
    starts = sim._grain_start
    grain_of_cell = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
    points = (sim._cells[:, None, :] + sim._sub_offsets[None]).reshape(-1, 3) @ rot.T
    cell_of_point = np.repeat(np.arange(len(sim._cells)), len(sim._sub_offsets))
    spec = sim._spectrum
    image = np.zeros(rows * cols)
    bs = g.beamstop
    for j in range(len(sim._hkl)):
        g_lab = sim._g_sample[:, j, :] @ rot.T  # (G, 3)
        g_norm = sim._g_norm[j]
        for s in range(0, len(points), chunk):
            p = points[s: s + chunk]
            cell = cell_of_point[s: s + chunk]
            gh = g_lab[grain_of_cell[cell]] / g_norm
            k_in = p - g.source
            k_in /= np.linalg.norm(k_in, axis=1, keepdims=True)
            sin_t = -np.sum(k_in * gh, axis=1)
            energy = HC * g_norm / (4 * np.pi * np.where(sin_t > 0, sin_t, np.nan))
            i0 = spec(energy)
            ok = (sin_t > 0) & (i0 > 0)
            k_out = k_in + 2 * sin_t[:, None] * gh
            hit = g.intersect(p, k_out)
            row, col = g.lab_to_pixel(hit)
            ok &= (row >= -0.5) & (col >= -0.5) & (row <= rows - 0.5) & (col <= cols - 0.5)
            ri, ci = np.floor(row + 0.5), np.floor(col + 0.5)
            ok &= ~((ri >= bs[0]) & (ri <= bs[1]) & (ci >= bs[2]) & (ci <= bs[3]))
            if not ok.any():
                continue
            p, k_in, k_out, sin_t, energy, row, col, cell = (
                a[ok] for a in (p, k_in, k_out, sin_t, energy, row, col, cell))
            lam = HC / energy
            c = sim._cells[cell] @ rot.T
            path = (_exit(c, -k_in, sim.sample.spec.diameter / 2)
                    + _exit(c, k_out, sim.sample.spec.diameter / 2))
            mu = np.interp(energy, spec.energy, sim._mu)
            two_t = 2 * np.arcsin(sin_t)
            weight = (sim.options.intensity_scale * _COUNTS_PER_UNIT * sim._sub_volume * 1e9
                      * sim._f_squared[j] * spec(energy) * lam**3 / np.sin(two_t)
                      * 0.5 * (1 + np.cos(two_t) ** 2) * np.exp(-mu * path))
            ir, ic = np.floor(row).astype(int), np.floor(col).astype(int)
            fr, fc = row - ir, col - ic
            for dr, wr in ((0, 1 - fr), (1, fr)):
                for dc, wc in ((0, 1 - fc), (1, fc)):
                    rr, cc = ir + dr, ic + dc
                    inside = (rr >= 0) & (rr < rows) & (cc >= 0) & (cc < cols)
                    np.add.at(image, rr[inside] * cols + cc[inside], (weight * wr * wc)[inside])
    return image.reshape(rows, cols)


def _exit(p: np.ndarray, d: np.ndarray, radius: float) -> np.ndarray:
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = 2 * (p[:, 0] * d[:, 0] + p[:, 1] * d[:, 1])
    c = p[:, 0] ** 2 + p[:, 1] ** 2 - radius**2
    return np.clip((-b + np.sqrt(np.clip(b * b - 4 * a * c, 0, None))) / (2 * a), 0, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", default="D18,D35,D64")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--reference", default="D18,D35",
                    help="samples also run through the brute-force reference")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    for name in args.samples.split(","):
        spec, geometry = preset(name)
        t0 = time.perf_counter()
        sim = Simulator(make_sample(spec, seed=1), geometry)
        sim.project(0.0)  # compile / warm up
        setup = time.perf_counter() - t0
        omegas = np.linspace(-180, 180, args.repeats, endpoint=False) + 1.0
        times = []
        for omega in omegas:
            t = time.perf_counter()
            sim.project(omega)
            times.append(time.perf_counter() - t)
        per = float(np.median(times))
        print(f"{name}: {per:.3f} s/projection (median of {len(times)}), setup {setup:.1f} s, "
              f"{sim.oversample}^3 sub-points per {sim.sample.voxel_size * 1e3:.1f} µm voxel, "
              f"181-projection scan ~ {181 * per / 60:.1f} min")
        if name in args.reference.split(","):
            omega = 37.0
            t = time.perf_counter()
            ref = reference_clean_image(sim, omega)
            t_ref = time.perf_counter() - t
            sim_noblur = Simulator(sim.sample, geometry, blur_sigma=0.0)
            t = time.perf_counter()
            ours = sim_noblur.project(omega).clean
            t_ours = time.perf_counter() - t
            ref = ref.astype(np.float32)
            ref[geometry.beamstop_mask()] = 0
            diff = np.abs(ours - ref).sum() / ref.sum()
            n_ref = ndimage.label(ref > 1.0)[1]
            n_ours = ndimage.label(ours > 1.0)[1]
            print(f"  reference (numpy brute force): {t_ref:.1f} s vs ours {t_ours:.3f} s -> "
                  f"ours is {t_ref / t_ours:.0f}x faster; clean images differ by "
                  f"{100 * diff:.3f} % of total intensity; components >1 count: "
                  f"{n_ours} ours, {n_ref} reference")


if __name__ == "__main__":
    main()
