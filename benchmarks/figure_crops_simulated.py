"""Raw / U-Net / routine / truth crops of a simulated noisy D35 frame, as one PNG for the docs.

    python benchmarks/figure_crops_simulated.py --out docs/img/crops_simulated.png

The same panels as ``benchmarks/real_frames.py --crops`` makes for real frames (which must
stay outside the repository), from frames our simulator made: a D35 scan on the paper's
2032² detector, noisy inputs by Eq. 1-2 at median spot SNR 2.5 (as in docs/validation.md),
the shipped U-Net with its defaults, the standard routine with the tuned parameters of
docs/validation.md, and the simulator's ground truth.
"""

from __future__ import annotations

import argparse
import sys
from itertools import islice
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from validate_dl import TUNED  # noqa: E402
from validate_routine import d35_geometry, noisy_scan  # noqa: E402

from labdct_live.models.inference import Denoiser  # noqa: E402
from labdct_live.segmentation.rolling_median import RollingMedianSubtractor  # noqa: E402
from labdct_live.segmentation.routine import segment_corrected  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/img/crops_simulated.png")
    parser.add_argument("--frame", type=int, default=5, help="which frame of the scan")
    parser.add_argument("--crop", type=int, default=256)
    args = parser.parse_args(argv)

    spec, geometry = d35_geometry(2032, 181)
    exclude = geometry.beamstop_mask()
    window = TUNED.window
    frames, truths = [], []
    for _, frame, labels in islice(noisy_scan(spec, geometry, 1, 7, 2.5),
                                   args.frame + window // 2 + 1):
        frames.append(frame)
        truths.append(labels)
    k = args.frame
    subtractor = RollingMedianSubtractor(window=window, exclude=exclude)
    corrected = {}
    for frame in frames:
        for index, residual in subtractor.push(frame):
            corrected[index] = residual
    routine, _ = segment_corrected(corrected[k], TUNED, exclude=exclude)
    denoiser = Denoiser(None)
    dl, denoised = denoiser.segment(frames[k], exclude=exclude, return_denoised=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regions = [(300, 900), (1300, 1300)]
    c = args.crop
    fig, axes = plt.subplots(len(regions), 5, figsize=(20, 4.2 * len(regions)))
    for row, (r0, c0) in zip(axes, regions):
        sl = (slice(r0, r0 + c), slice(c0, c0 + c))
        raw = frames[k][sl].astype(float)
        panels = [("raw", raw, "gray", tuple(np.percentile(raw, [1, 99.7]))),
                  ("raw - rolling median", corrected[k][sl], "gray", (-30, 120)),
                  ("U-Net (shipped, defaults)", dl[sl], "viridis", (0, 1)),
                  ("routine (tuned)", routine[sl], "viridis", (0, 1)),
                  ("ground truth", (truths[k][sl] > 0).astype(float), "viridis", (0, 1))]
        for ax, (title, image, cmap, (lo, hi)) in zip(row, panels):
            ax.imshow(image, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(f"{title}\nrows {r0}-{r0 + c - 1}, cols {c0}-{c0 + c - 1}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"simulated D35, frame {k} (ω {geometry.omegas[k]:.0f}°), median spot SNR 2.5")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=60)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
