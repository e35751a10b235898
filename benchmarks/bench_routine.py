"""Seconds per 2032² frame of the standard routine: the rolling median and the later stages.

    python benchmarks/bench_routine.py [--size 2032] [--frames 15] [--repeat 3]

Frames are simulated D35 projections (the paper's detector) with Eq. 1-2 noise on a
procedural background, so the spot and noise-component counts are realistic. Prints, per
stage, the median over frames of the wall time (after a warm-up that compiles the numba
kernels), and the ratio of our rolling median to ``numpy.median`` over the same window.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def noisy_frames(size: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from labdct_live.simulation.background import background_for_geometry
    from labdct_live.simulation.forward import Simulator
    from labdct_live.simulation.microstructure import make_sample
    from labdct_live.simulation.presets import preset
    from labdct_live.training.synthesis import (
        scale_for_median_snr,
        spot_statistics,
        synthesize_input,
    )

    spec, geometry = preset("D35")
    if size != geometry.detector_shape[0]:
        factor = geometry.detector_shape[0] / size
        geometry = geometry.with_(detector_shape=(size, size),
                                  pixel_size=geometry.pixel_size * factor)
    sim = Simulator(make_sample(spec, seed=1), geometry)
    background = background_for_geometry(geometry, seed).render()
    rng = np.random.default_rng(seed)
    frames = np.empty((n, size, size), np.uint16)
    scale = None
    for i, omega in enumerate(geometry.omegas[:n]):
        proj = sim.project(omega)
        if scale is None:  # one exposure for the scan: median spot SNR 3 in the first frame
            stats = spot_statistics(proj.clean, proj.labels)
            at = (np.clip(np.rint(stats["row"]).astype(int), 0, size - 1),
                  np.clip(np.rint(stats["col"]).astype(int), 0, size - 1))
            scale = scale_for_median_snr(3.0, stats["mean"], background[at], 110.0, 1.0)
        x, _ = synthesize_input(proj.clean, background, scale=scale, r_bg=110.0, rng=rng)
        frames[i] = np.clip(np.rint(x), 0, 65535)
    return frames, geometry.beamstop_mask()


def seconds(fn, *args, repeat: int = 1) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2032, help="frame side, pixels")
    parser.add_argument("--frames", type=int, default=15, help="frames in the stream")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of the later stages")
    args = parser.parse_args()

    import numba

    from labdct_live.segmentation.rolling_median import RollingMedianSubtractor
    from labdct_live.segmentation.routine import (
        RoutineParams,
        log_response,
        segment_corrected,
        threshold_response,
    )
    from labdct_live.segmentation.snr import spot_snr
    from labdct_live.segmentation.spots import spot_table

    print(f"cores: {os.cpu_count()}, numba threads: {numba.get_num_threads()}")
    t0 = time.perf_counter()
    frames, exclude = noisy_frames(args.size, args.frames)
    print(f"{args.frames} simulated noisy {args.size}² frames in "
          f"{time.perf_counter() - t0:.1f} s")

    # Warm-up: compile (or load cached) numba kernels on a small stack.
    warm = RollingMedianSubtractor(11)
    for f in frames[:11, :64, :64]:
        warm.push(f)
    small = frames[0, :64, :64].astype(np.float32)
    spot_snr(small, segment_corrected(small)[1])
    spot_table(segment_corrected(small)[1], small)

    params = RoutineParams()
    window = params.window
    sub = RollingMedianSubtractor(window, circular=True, exclude=exclude)
    push_times, corrected = [], {}
    for f in frames:
        t0 = time.perf_counter()
        out = sub.push(f)
        push_times.append(time.perf_counter() - t0)
        corrected.update(out)
    steady = push_times[window - 1:]  # pushes that emit one frame each
    median_s = float(np.median(steady))
    numpy_s = seconds(lambda: np.median(frames[:window], axis=0), repeat=1)
    frame_index = sorted(corrected)[len(corrected) // 2]
    image = corrected[frame_index]

    print(f"\nrolling median (window {window}), per frame: {median_s:.3f} s "
          f"(numpy.median of the same window: {numpy_s:.3f} s, {numpy_s / median_s:.1f}x)")
    print("\nlater stages (background, Gaussian + Laplacian, thresholds, spot table), per frame:")
    for name, p in (("public code (sigma 6, min 10)", params),
                    ("older variant (sigma 0.5, min 2)", RoutineParams.older_variant())):
        response = log_response(image, p.background, p.sigma, exclude)
        t_log = seconds(log_response, image, p.background, p.sigma, exclude, repeat=args.repeat)
        t_thr = seconds(threshold_response, response, p.percent, p.min_size, repeat=args.repeat)
        _, labels = threshold_response(response, p.percent, p.min_size)
        t_tab = seconds(spot_table, labels, image, repeat=args.repeat)
        total = t_log + t_thr + t_tab
        print(f"  {name:34s} LoG {t_log:.3f} s, thresholds {t_thr:.3f} s, spot table "
              f"{t_tab:.3f} s = {total:.3f} s ({int(labels.max())} spots)")
    _, labels = segment_corrected(image, params, exclude)
    t_snr = seconds(spot_snr, frames[frame_index], labels, 20, exclude, repeat=args.repeat)
    print(f"\nper-spot SNR of the public-code segmentation: {t_snr:.3f} s per frame")


if __name__ == "__main__":
    main()
