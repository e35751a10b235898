"""Example images of docs/training-data.md (backgrounds, the Appendix A extractor, a pair).

    python benchmarks/figures_training_data.py [--out docs/img]

Writes small PNGs (2032² frames shown downsampled to 512²):
``backgrounds_procedural.png``, ``background_extraction.png``, ``training_pair.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def downsample(image: np.ndarray, size: int = 512) -> np.ndarray:
    """Block mean to about ``size`` pixels a side (keeps faint features visible)."""
    f = max(1, image.shape[0] // size)
    rows, cols = (image.shape[0] // f) * f, (image.shape[1] // f) * f
    return image[:rows, :cols].reshape(rows // f, f, cols // f, f).mean(axis=(1, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from labdct_live.simulation.background import background_for_geometry
    from labdct_live.simulation.forward import Simulator
    from labdct_live.simulation.microstructure import make_sample
    from labdct_live.simulation.presets import preset
    from labdct_live.training.backgrounds import extract_backgrounds, spot_mask
    from labdct_live.training.synthesis import SynthesisConfig, make_pair, random_acquisition

    spec, geometry = preset("D35")

    # 1. procedural backgrounds: paper geometry and two varied geometries
    geometries = [geometry] + [random_acquisition(s)[1] for s in (3, 8)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2), dpi=100)
    for ax, g, seed in zip(axes, geometries, (1, 2, 3)):
        image = background_for_geometry(g, seed).render()
        ax.imshow(downsample(image), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"seed {seed}, beam stop {g.beamstop}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out / "backgrounds_procedural.png")
    plt.close(fig)

    # 2. Appendix A on a constructed stack: background x counts + Poisson noise + spots
    sim = Simulator(make_sample(spec, seed=1), geometry)
    rng = np.random.default_rng(0)
    truth_bg = background_for_geometry(geometry, 5).render()
    frames = []
    for omega in geometry.omegas[:9]:
        proj = sim.project(float(omega))
        frames.append(rng.poisson(600 * truth_bg + 3 * proj.clean).astype(np.uint16))
    extracted = extract_backgrounds(np.stack(frames), window=9)[0]
    mask = spot_mask(frames[0])
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2), dpi=100)
    panels = [(frames[0], "one frame (counts)", dict(vmin=0, vmax=np.percentile(frames[0], 99.5))),
              (mask, "Sobel spot mask", dict(vmin=0, vmax=1)),
              (extracted, "extracted background (9-frame median / max)", dict(vmin=0, vmax=1))]
    for ax, (image, title, kw) in zip(axes, panels):
        ax.imshow(downsample(image.astype(np.float32)), cmap="gray", **kw)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out / "background_extraction.png")
    plt.close(fig)

    # 3. a training pair: whole frame and a native-resolution 256² crop
    proj = sim.project(0.0)
    background = background_for_geometry(geometry, 7).render()
    pair = make_pair(proj.clean, proj.labels, background, beamstop=geometry.beamstop_mask(),
                     config=SynthesisConfig(median_snr_range=(3.0, 3.0)), seed=3)
    x = pair.input_normalized()
    r0, c0 = 200, 1300
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.3), dpi=100)
    views = [(downsample(x), "input, normalised (downsampled)", dict(vmin=-1.5, vmax=2.5)),
             (downsample(pair.target.astype(np.float32)), "LoG target (downsampled)",
              dict(vmin=0, vmax=0.3)),
             (x[r0:r0 + 256, c0:c0 + 256], "input, 256² crop at full resolution",
              dict(vmin=-1.5, vmax=2.5)),
             (pair.target[r0:r0 + 256, c0:c0 + 256], "target, same crop", dict(vmin=0, vmax=1))]
    for ax, (image, title, kw) in zip(axes, views):
        ax.imshow(image, cmap="gray", **kw)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"D35, median spot SNR {pair.meta['median_snr']:.1f}, scale "
                 f"{pair.meta['scale']:.3f}, R_BG {pair.meta['r_bg']:.1f}", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out / "training_pair.png")
    plt.close(fig)
    print(f"wrote figures to {args.out}")


if __name__ == "__main__":
    main()
