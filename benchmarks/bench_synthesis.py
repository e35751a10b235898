"""Speed of training-data synthesis: backgrounds, full-resolution pairs, 256² crops.

    python benchmarks/bench_synthesis.py [--crops 200] [--repeat 5]

On the paper's 2032² detector with a simulated D35 projection: the procedural background
(whole frame and one 256² window), the Appendix A spot removal of one frame, one full-frame
pair (Eq. 1-2 noise, LoG target), ``normalize_frame``, and the on-the-fly crop stream
(:func:`labdct_live.training.crops.generate_crops`, including projection loads and LoG targets
amortised over its projection pool). Medians of ``--repeat`` runs; wall time on this
machine, so compare figures as ratios within one run.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


def seconds(fn, repeat: int) -> float:
    fn()  # warm-up (numba compilation, caches)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=200, help="crops timed in the stream")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from labdct_live.simulation.background import ProceduralBackground
    from labdct_live.training.acquisitions import paper_acquisitions
    from labdct_live.training.backgrounds import remove_spots
    from labdct_live.training.cache import build_projection_cache
    from labdct_live.training.crops import CropSettings, generate_crops
    from labdct_live.training.synthesis import make_pair, normalize_frame

    with tempfile.TemporaryDirectory() as tmp:
        cache = build_projection_cache(tmp, paper_acquisitions(("D35",)), 4, progress=False)
        proj = cache[0]
        g = proj.geometry
        shape = g.detector_shape
        bs = g.beamstop_mask()
        print(f"frame {shape[0]}x{shape[1]}, D35, {int(proj.labels.max())} spots")

        seed = iter(range(10**6))
        t_bg_init = seconds(lambda: ProceduralBackground(shape, g.beamstop, next(seed)),
                            args.repeat)
        bg = ProceduralBackground(shape, g.beamstop, 1)
        t_bg_full = seconds(bg.render, args.repeat)
        t_bg_crop = seconds(lambda: bg.render(slice(300, 556), slice(300, 556)), args.repeat)
        background = bg.render()
        print(f"procedural background: set-up {t_bg_init * 1e3:7.1f} ms, whole frame "
              f"{t_bg_full * 1e3:7.1f} ms, 256² window {t_bg_crop * 1e3:6.2f} ms")

        pair = make_pair(proj.clean, proj.labels, background, beamstop=bs, seed=0)
        raw = np.clip(np.rint(pair.input * 6), 0, 65535).astype(np.uint16)
        t_remove = seconds(lambda: remove_spots(raw), max(1, args.repeat // 2))
        print(f"Appendix A spot removal (Sobel mask, dilation, fill): {t_remove:.2f} s per frame")

        t_pair = seconds(lambda: make_pair(proj.clean, proj.labels, background, beamstop=bs,
                                           seed=1), args.repeat)
        t_norm = seconds(lambda: normalize_frame(pair.input), args.repeat)
        print(f"full-resolution pair (background given): {t_pair:.2f} s = "
              f"{1 / t_pair:.2f} pairs/s; with a new background "
              f"{1 / (t_pair + t_bg_init + t_bg_full):.2f} pairs/s")
        print(f"normalize_frame: {t_norm * 1e3:.1f} ms per frame")

        for size in (256, 512):
            stream = generate_crops(cache, np.random.default_rng(0),
                                    crops=CropSettings(size=size))
            next(stream)
            t0 = time.perf_counter()
            for _ in range(args.crops):
                next(stream)
            per_crop = (time.perf_counter() - t0) / args.crops
            print(f"crop stream {size}²: {per_crop * 1e3:6.1f} ms per crop = "
                  f"{1 / per_crop:6.1f} crops/s (8 crops per synthetic frame, pool of 4 "
                  "projections)")


if __name__ == "__main__":
    main()
