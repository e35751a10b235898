"""Training crops: (noisy input, target) pairs cut from cached projections with spots in them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from labdct_live.simulation.background import (
    ArrayBackground,
    ProceduralBackground,
    beam_center_pixel,
)
from labdct_live.simulation.geometry import Geometry
from labdct_live.training.cache import DatasetError
from labdct_live.training.synthesis import (
    SynthesisConfig,
    add_noise,
    draw_r_bg,
    make_target,
    normalization_stats,
    normalization_stride,
    scale_for_median_snr,
    spot_statistics,
    to_uint8,
)

if TYPE_CHECKING:
    from labdct_live.training.cache import ProjectionCache

__all__ = [
    "CropSettings",
    "generate_crops",
]


@dataclass(frozen=True)
class CropSettings:
    """How crops are cut from synthetic frames.

    Parameters
    ----------
    size : int or None
        Crop side (pixels); None for whole frames.
    spot_fraction : float
        Probability that a crop is centred (with jitter of a third of its side) on a random
        spot rather than placed uniformly.
    crops_per_frame : int
        Crops taken from one synthetic frame (same background, scale and noise level)
        before the next frame is drawn.
    pool_size : int
        Projections kept in memory per worker.
    reuse : int
        Frames drawn, on average, from a pooled projection before it is replaced.
    augment : bool
        Random flips and transposition of each crop (input and target together).
    """

    size: int | None = 256
    spot_fraction: float = 0.75
    crops_per_frame: int = 8
    pool_size: int = 4
    reuse: int = 4
    augment: bool = True

    def __post_init__(self) -> None:
        if self.size is not None and int(self.size) < 8:
            raise DatasetError(f"crop size must be at least 8 pixels or None, got {self.size!r}")
        if not 0 <= self.spot_fraction <= 1:
            raise DatasetError(f"spot_fraction must be in [0, 1], got {self.spot_fraction!r}")
        for name in ("crops_per_frame", "pool_size", "reuse"):
            if int(getattr(self, name)) < 1:
                raise DatasetError(f"{name} must be >= 1, got {getattr(self, name)!r}")


@dataclass
class _Loaded:
    """A projection prepared for cropping: its target and spot positions computed once."""

    index: int
    clean: np.ndarray
    target: np.ndarray
    geometry: Geometry
    meta: dict
    spot_rows: np.ndarray
    spot_cols: np.ndarray
    spot_means: np.ndarray


def _load(cache: ProjectionCache, index: int, config: SynthesisConfig) -> _Loaded:
    proj = cache[index]
    geometry = proj.geometry
    exclude = geometry.beamstop_mask() if geometry.has_beamstop else None
    target = make_target(config.target, proj.clean, proj.labels, exclude, config.target_params)
    stats = spot_statistics(proj.clean, proj.labels)
    return _Loaded(index, proj.clean, target, geometry, proj.meta, stats["row"], stats["col"],
                   stats["mean"])


def generate_crops(
    cache: ProjectionCache,
    rng: np.random.Generator,
    *,
    config: SynthesisConfig = SynthesisConfig(),
    crops: CropSettings = CropSettings(),
    backgrounds: np.ndarray | None = None,
    background_seeds: Sequence[int] | None = None,
    projections: Sequence[int] | None = None,
    output: str = "float",
) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
    """Endless (input, target, meta) crops of synthetic frames (numpy; see the module doc).

    Parameters
    ----------
    cache : ProjectionCache
    rng : numpy.random.Generator
        The only source of randomness: same state, same sequence.
    config : SynthesisConfig
        Noise model, intensity range and target kind.
    crops : CropSettings
    backgrounds : (k, M, N) array in [0, 1], optional
        Background images (e.g. extracted from experimental frames) used instead of the
        procedural generator; their shape must equal the projections'.
    background_seeds : sequence of int, optional
        Procedural backgrounds limited to these seeds (a fixed set of backgrounds); a fresh
        seed for every frame when None.
    projections : sequence of int, optional
        Cache indices to draw from (all when None).
    output : {"float", "uint8"}
        ``"float"``: input normalised per frame
        (:func:`~labdct_live.training.synthesis.normalize_frame`
        statistics of the whole frame), float32. ``"uint8"``: the paper's 8-bit counts.

    Yields
    ------
    input : (h, w) float32 or uint8
    target : (h, w) uint8 {0, 1}
    meta : dict
        projection, acquisition, omega, background, scale, median_snr, r_bg, i0, tau,
        row0, col0, center, spread, flip.
    """
    if output not in ("float", "uint8"):
        raise DatasetError(f"output must be 'float' or 'uint8', got {output!r}")
    pool_indices = list(range(len(cache))) if projections is None else list(projections)
    if not pool_indices:
        raise DatasetError("projections is empty")
    if backgrounds is not None:
        backgrounds = np.asarray(backgrounds, dtype=np.float32)
        if backgrounds.ndim == 2:
            backgrounds = backgrounds[None]
        if backgrounds.ndim != 3 or len(backgrounds) == 0:
            raise DatasetError(f"backgrounds must be (k, rows, cols), got {backgrounds.shape}")
    if background_seeds is not None and len(background_seeds) == 0:
        raise DatasetError("background_seeds is empty")

    pool: list[_Loaded] = []
    while True:
        # Projection pool: fill, then replace one member about every `reuse` frames.
        if len(pool) < min(crops.pool_size, len(pool_indices)):
            pool.append(_load(cache, pool_indices[rng.integers(len(pool_indices))], config))
            proj = pool[-1]
        else:
            slot = int(rng.integers(len(pool)))
            if rng.random() < 1.0 / crops.reuse:
                pool[slot] = _load(cache, pool_indices[rng.integers(len(pool_indices))], config)
            proj = pool[slot]
        yield from _frame_crops(proj, rng, config, crops, backgrounds, background_seeds,
                                output)


def _frame_crops(proj: _Loaded, rng: np.random.Generator,
                 config: SynthesisConfig, crops: CropSettings, backgrounds, background_seeds,
                 output: str) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
    rows, cols = proj.clean.shape
    if backgrounds is not None:
        b_index = int(rng.integers(len(backgrounds)))
        if backgrounds.shape[1:] != (rows, cols):
            raise DatasetError(f"background images are {backgrounds.shape[1:]}, projections "
                               f"{(rows, cols)}: they must have the same shape")
        background = ArrayBackground(backgrounds[b_index])
        b_label = f"array:{b_index}"
    else:
        b_seed = (int(rng.integers(2**31)) if background_seeds is None
                  else int(background_seeds[rng.integers(len(background_seeds))]))
        beamstop = proj.geometry.beamstop if proj.geometry.has_beamstop else None
        background = ProceduralBackground((rows, cols), beamstop, b_seed,
                                          center=beam_center_pixel(proj.geometry))
        b_label = f"procedural:{b_seed}"

    r_bg = draw_r_bg(config.i0, rng)
    median_snr = config.draw_median_snr(rng)
    # Whole-frame statistics from the regular grid normalize_frame itself would sample.
    stride = normalization_stride((rows, cols))
    grid_r = grid_c = slice(None, None, stride)
    bg_grid = background.render(grid_r, grid_c)
    spot_r = np.clip(np.rint(proj.spot_rows / stride).astype(int), 0, bg_grid.shape[0] - 1)
    spot_c = np.clip(np.rint(proj.spot_cols / stride).astype(int), 0, bg_grid.shape[1] - 1)
    scale = scale_for_median_snr(median_snr, proj.spot_means, bg_grid[spot_r, spot_c], r_bg,
                                 config.tau)
    x_grid = add_noise(proj.clean[grid_r, grid_c] * np.float32(scale) + np.float32(r_bg) * bg_grid,
                       config.tau, rng)
    center, spread = normalization_stats(x_grid)

    h = rows if crops.size is None else min(int(crops.size), rows)
    w = cols if crops.size is None else min(int(crops.size), cols)
    n_crops = 1 if crops.size is None else crops.crops_per_frame
    base_meta = {
        "projection": proj.index, "acquisition": proj.meta["acquisition"]["name"],
        "omega": float(proj.meta["omega"]), "background": b_label, "scale": scale,
        "median_snr": median_snr, "r_bg": r_bg, "i0": config.i0, "tau": config.tau,
        "center": center, "spread": spread,
    }
    for _ in range(n_crops):
        if proj.spot_rows.size and rng.random() < crops.spot_fraction:
            k = int(rng.integers(proj.spot_rows.size))
            r_mid = proj.spot_rows[k] + rng.uniform(-h / 3, h / 3)
            c_mid = proj.spot_cols[k] + rng.uniform(-w / 3, w / 3)
            r0 = int(np.clip(round(r_mid - h / 2), 0, rows - h))
            c0 = int(np.clip(round(c_mid - w / 2), 0, cols - w))
        else:
            r0 = int(rng.integers(rows - h + 1))
            c0 = int(rng.integers(cols - w + 1))
        window = (slice(r0, r0 + h), slice(c0, c0 + w))
        x0 = proj.clean[window] * np.float32(scale)
        x0 += np.float32(r_bg) * background.render(*window)
        x = add_noise(x0, config.tau, rng)
        target = proj.target[window]
        if output == "float":
            x -= np.float32(center)
            x *= np.float32(1.0 / spread)
        else:
            x = to_uint8(x)
        flip = 0
        if crops.augment and crops.size is not None:
            flip = int(rng.integers(8))  # bit 0: rows, bit 1: cols, bit 2: transpose
            x, target = _flip(x, flip), _flip(target, flip)
        yield (np.ascontiguousarray(x), np.ascontiguousarray(target),
               {**base_meta, "row0": r0, "col0": c0, "flip": flip})


def _flip(a: np.ndarray, code: int) -> np.ndarray:
    if code & 1:
        a = a[::-1]
    if code & 2:
        a = a[:, ::-1]
    if code & 4 and a.shape[0] == a.shape[1]:
        a = a.T
    return a
