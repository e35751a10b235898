"""Training crops for one instrument: its own backgrounds and noise, spots in its geometry.

Where :func:`labdct_live.training.crops.generate_crops` draws the paper's Eq. 1-2 on
procedural backgrounds, this draws what a user's detector records:

``clean = B + s · spots``, ``x = noise(clean)``

with ``B`` a background in counts extracted from the user's frames with their spots removed
(:func:`count_backgrounds`, the Appendix A recipe rescaled to the frames' level), ``spots``
a projection simulated in the user's geometry (a projection cache), ``s`` chosen so that the
median spot SNR (mean spot counts over the noise SD of the background under it) is drawn
log-uniformly in :attr:`InstrumentSynthesis.median_snr_range`, and ``noise`` the detector's
:class:`~labdct_live.training.noise_model.NoiseModel`. With ``input="static"`` the network
sees ``x - B``: the frame with its static background subtracted, as
:func:`labdct_live.segmentation.scan_filters.subtract_static` does at inference with the
stack median. Inputs are normalised as at inference
(:func:`~labdct_live.segmentation.normalization.normalize_frame` of the whole frame) and the
targets follow the shipped model's convention (LoG of the clean spot image,
:data:`~labdct_live.training.synthesis.TARGET_PARAMS`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from labdct_live.segmentation.normalization import normalize_frame
from labdct_live.simulation.geometry import Geometry
from labdct_live.training.backgrounds import extract_backgrounds
from labdct_live.training.cache import DatasetError, ProjectionCache
from labdct_live.training.crops import CropSettings
from labdct_live.training.noise_model import NoiseModel, stack_median
from labdct_live.training.synthesis import TARGET_PARAMS, make_target, spot_statistics

__all__ = ["INPUT_MODES", "InstrumentSynthesis", "Scene", "count_backgrounds", "instrument_crops",
           "scene_crops"]

#: ``raw``: the network sees the frame; ``static``: the frame minus its static background.
INPUT_MODES = ("raw", "static")


@dataclass(frozen=True)
class InstrumentSynthesis:
    """How an instrument's training frames are composed.

    Parameters
    ----------
    median_snr_range : (float, float)
        Median spot SNR of a frame, drawn log-uniformly (the shipped model's 0.7-6).
    input : {"raw", "static"}
        What the network sees (see the module docstring).
    hot : bool
        Add hot/dead pixels from the noise model (False: the extracted backgrounds carry the
        detector's own).
    zingers : bool
        Add zingers at the measured rate.
    """

    median_snr_range: tuple[float, float] = (0.7, 6.0)
    input: str = "raw"
    hot: bool = False
    zingers: bool = True

    def __post_init__(self) -> None:
        lo, hi = self.median_snr_range
        if not 0 < lo <= hi:
            raise DatasetError(f"median_snr_range must be 0 < low <= high, got "
                               f"{self.median_snr_range!r}")
        object.__setattr__(self, "median_snr_range", (float(lo), float(hi)))
        if self.input not in INPUT_MODES:
            raise DatasetError(f"input must be one of {INPUT_MODES}, got {self.input!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["median_snr_range"] = list(self.median_snr_range)
        return d


def count_backgrounds(frames: np.ndarray | Sequence[np.ndarray], *,
                      exclude: np.ndarray | None = None, window: int = 60,
                      stride: int | None = None, median: np.ndarray | None = None,
                      progress: bool = True) -> np.ndarray:
    """Backgrounds of a scan in counts: Appendix A, rescaled to the stack median's level.

    :func:`~labdct_live.training.backgrounds.extract_backgrounds` returns images divided by
    their maximum; each is multiplied back so that its median (outside ``exclude``) equals
    that of the stack median.

    Returns
    -------
    (k, H, W) float32
    """
    n = len(frames)
    window = max(1, min(int(window), n))
    stride = max(1, window // 2) if stride is None else int(stride)
    images = extract_backgrounds(frames, window=window, stride=stride, progress=progress)
    med = stack_median(frames) if median is None else np.asarray(median, np.float32)
    valid = np.ones(med.shape, bool) if exclude is None else ~np.asarray(exclude, bool)
    level = float(np.median(med[valid]))
    out = np.empty_like(images)
    for k, image in enumerate(images):
        ref = float(np.median(image[valid]))
        if ref <= 0:
            raise DatasetError(f"background {k} is dark where it should carry the scan's level")
        out[k] = image * np.float32(level / ref)
    return out


@dataclass
class _Frame:
    index: int
    geometry: Geometry
    clean: np.ndarray
    target: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    means: np.ndarray


def _load(cache: ProjectionCache, index: int, exclude: np.ndarray | None) -> _Frame:
    proj = cache[index]
    target = make_target("log", proj.clean, proj.labels, exclude, TARGET_PARAMS)
    stats = spot_statistics(proj.clean, proj.labels)
    return _Frame(index, proj.geometry, proj.clean, target, stats["row"], stats["col"],
                  stats["mean"])


def compose_frame(clean: np.ndarray, background: np.ndarray, noise: NoiseModel,
                  settings: InstrumentSynthesis, rng: np.random.Generator,
                  spot_rows: np.ndarray, spot_cols: np.ndarray, spot_means: np.ndarray,
                  median_snr: float | None = None) -> tuple[np.ndarray, dict]:
    """One synthetic frame in counts and its recipe (scale, median SNR).

    Returns the network's input before normalisation (``x`` or ``x - B``) and the meta.
    """
    if median_snr is None:
        lo, hi = settings.median_snr_range
        median_snr = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    if spot_means.size:
        r = np.clip(np.rint(spot_rows).astype(int), 0, clean.shape[0] - 1)
        c = np.clip(np.rint(spot_cols).astype(int), 0, clean.shape[1] - 1)
        sd = noise.sd(background[r, c])
        per_unit = spot_means / np.maximum(sd, 1e-6)  # SNR at scale 1
        scale = float(median_snr / max(float(np.median(per_unit)), 1e-12))
    else:
        scale = 1.0
    x = noise.apply(background + np.float32(scale) * clean, rng, hot=settings.hot,
                    zingers=settings.zingers)
    if settings.input == "static":
        x -= background
    return x, {"scale": scale, "median_snr": median_snr}


def instrument_crops(cache: ProjectionCache, backgrounds: np.ndarray, noise: NoiseModel,
                     rng: np.random.Generator, *,
                     settings: InstrumentSynthesis = InstrumentSynthesis(),
                     crops: CropSettings = CropSettings(),
                     projections: Sequence[int] | None = None,
                     exclude: np.ndarray | None = None,
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
    """Endless ``(input, target, meta)`` crops (float32 normalised input, uint8 target).

    Parameters
    ----------
    cache : ProjectionCache
        Projections simulated in the instrument's geometry.
    backgrounds : (k, H, W) float32
        Backgrounds in counts (:func:`count_backgrounds`), the projections' shape.
    noise : NoiseModel
    rng : numpy.random.Generator
        The only randomness: same state, same crops.
    settings : InstrumentSynthesis
    crops : CropSettings
    projections : sequence of int, optional
        Cache indices to draw from (all when None).
    exclude : (H, W) bool, optional
        Beam stop (left out of the targets).
    """
    backgrounds = np.asarray(backgrounds, dtype=np.float32)
    if backgrounds.ndim == 2:
        backgrounds = backgrounds[None]
    if backgrounds.ndim != 3 or not len(backgrounds):
        raise DatasetError(f"backgrounds must be (k, rows, cols), got {backgrounds.shape}")

    def scene(shape: tuple[int, int], _geometry, rng: np.random.Generator):
        if backgrounds.shape[1:] != shape:
            raise DatasetError(f"backgrounds are {backgrounds.shape[1:]}, projections "
                               f"{shape}: they must have the same shape")
        b = int(rng.integers(len(backgrounds)))
        return backgrounds[b], noise, {"background": b}

    return scene_crops(cache, scene, rng, settings=settings, crops=crops,
                       projections=projections, exclude=exclude)


#: A frame's scene: ``(shape, geometry, rng) -> (background in counts, noise model, meta)``.
Scene = Callable[[tuple[int, int], Geometry, np.random.Generator],
                 tuple[np.ndarray, NoiseModel, dict]]


def scene_crops(cache: ProjectionCache, scene: Scene, rng: np.random.Generator, *,
                settings: InstrumentSynthesis = InstrumentSynthesis(),
                crops: CropSettings = CropSettings(),
                projections: Sequence[int] | None = None,
                exclude: np.ndarray | None | str = None,
                ) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
    """Endless crops of cached projections, each frame composed on the scene ``scene`` draws.

    What :func:`instrument_crops` does with one instrument's backgrounds and noise, for any
    source of (background, noise model) per frame, e.g. random instruments
    (:mod:`labdct_live.training.broad`).

    Parameters
    ----------
    cache : ProjectionCache
    scene : callable
        ``(shape, geometry, rng) -> (background, noise, meta)`` for each synthetic frame
        (background in counts, the projection's shape).
    rng : numpy.random.Generator
        The only randomness: same state, same crops.
    settings : InstrumentSynthesis
    crops : CropSettings
    projections : sequence of int, optional
        Cache indices to draw from (all when None).
    exclude : (H, W) bool, None or "geometry"
        Beam stop left out of the targets; ``"geometry"``: each projection's own.
    """
    indices = list(range(len(cache))) if projections is None else list(projections)
    if not indices:
        raise DatasetError("no projections to draw from")

    def load(index: int) -> _Frame:
        if isinstance(exclude, str):
            g = cache[index].geometry
            return _load(cache, index, g.beamstop_mask() if g.has_beamstop else None)
        return _load(cache, index, exclude)

    pool: list[_Frame] = []
    while True:
        if len(pool) < min(crops.pool_size, len(indices)):
            pool.append(load(indices[rng.integers(len(indices))]))
            proj = pool[-1]
        else:
            slot = int(rng.integers(len(pool)))
            if rng.random() < 1.0 / crops.reuse:
                pool[slot] = load(indices[rng.integers(len(indices))])
            proj = pool[slot]
        background, noise, scene_meta = scene(proj.clean.shape, proj.geometry, rng)
        x, meta = compose_frame(proj.clean, background, noise, settings, rng, proj.rows,
                                proj.cols, proj.means)
        x = normalize_frame(x)
        rows, cols = x.shape
        h = rows if crops.size is None else min(int(crops.size), rows)
        w = cols if crops.size is None else min(int(crops.size), cols)
        meta.update(projection=proj.index, **scene_meta)
        for _ in range(1 if crops.size is None else crops.crops_per_frame):
            if proj.rows.size and rng.random() < crops.spot_fraction:
                k = int(rng.integers(proj.rows.size))
                r0 = int(np.clip(round(proj.rows[k] + rng.uniform(-h / 3, h / 3) - h / 2), 0,
                                 rows - h))
                c0 = int(np.clip(round(proj.cols[k] + rng.uniform(-w / 3, w / 3) - w / 2), 0,
                                 cols - w))
            else:
                r0, c0 = int(rng.integers(rows - h + 1)), int(rng.integers(cols - w + 1))
            xi = x[r0:r0 + h, c0:c0 + w]
            ti = proj.target[r0:r0 + h, c0:c0 + w]
            flip = int(rng.integers(8)) if crops.augment else 0
            if flip & 1:
                xi, ti = xi[::-1], ti[::-1]
            if flip & 2:
                xi, ti = xi[:, ::-1], ti[:, ::-1]
            if flip & 4 and h == w:
                xi, ti = xi.T, ti.T
            yield (np.ascontiguousarray(xi, dtype=np.float32), np.ascontiguousarray(ti),
                   {**meta, "row0": r0, "col0": c0, "flip": flip})
