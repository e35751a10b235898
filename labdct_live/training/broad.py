"""Training data that covers real instruments: random geometries, detectors and backgrounds.

The shipped model was trained on the paper's set-up only (Lss = Lsd = 11 mm, 3.36 µm
pixels, Eq. 1-2 noise on procedural backgrounds of ~100 counts). A real scan differs in all
of these (docs/real-frames.md: a far-field 100/100 mm set-up with 2x-binned 68 µm pixels,
a ~550-count structured background, Poisson-like noise at gain ~0.8, zingers). This module
draws *random instruments* over the range users have and composes training frames on them:

- :func:`broad_acquisitions`: Lss 10-150 mm and Lsd 10-300 mm (log-uniform, Laue-focusing
  to far field), a physical pixel pitch of 3-75 µm binned 1-4 times, a detector of 384-768
  stored pixels whose half-width sees ``tan 2θ`` of 0.15-0.45 where the pitch range allows,
  tilts, offsets, beam stops (or none), Al or Fe samples of 0.15-0.6 mm with 30-400 grains;
- :func:`random_scene`: per frame, a background of 0 to ~1500 counts (a flat level plus a
  :class:`~labdct_live.simulation.background.ProceduralBackground` structure and a
  low-frequency flat-field residual of up to ±8 %) and a random
  :class:`~labdct_live.training.noise_model.NoiseModel` (offset, gain 0.3-4 counts/photon,
  read noise 1-25 counts, spatial correlation 0-0.7, hot and dead pixels, zingers);
- :func:`broad_crops`: endless crops of those frames through
  :func:`~labdct_live.training.instrument_data.scene_crops`, spots scaled so that a frame's
  median spot SNR is log-uniform in 0.7-30, normalised and targeted as the shipped model
  (raw input, LoG targets).

:mod:`labdct_live.models.retrain` mixes these crops with the paper's (Eq. 1-2) crops and
fine-tunes the shipped model on them (``labdct-live train --data broad``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import ndimage

from labdct_live.simulation.background import ProceduralBackground, beam_center_pixel
from labdct_live.simulation.geometry import NO_BEAMSTOP, Geometry
from labdct_live.simulation.microstructure import SampleSpec
from labdct_live.training.acquisitions import Acquisition
from labdct_live.training.cache import DatasetError, ProjectionCache
from labdct_live.training.crops import CropSettings
from labdct_live.training.instrument_data import InstrumentSynthesis, scene_crops
from labdct_live.training.noise_model import NoiseModel

__all__ = ["BroadRanges", "broad_acquisitions", "broad_crops", "random_geometry",
           "random_noise_model", "random_scene"]


@dataclass(frozen=True)
class BroadRanges:
    """Ranges of the random instruments (all drawn uniformly unless said otherwise).

    Parameters
    ----------
    lss_mm, lsd_mm : (float, float)
        Source-sample and sample-detector distances, log-uniform.
    pitch_um : (float, float)
        Physical pixel pitch, log-uniform; the stored pixel is pitch x binning.
    binning : (int, int)
        Binning factor, inclusive.
    detector_px : (int, int)
        Stored frame side (square frames, a multiple of 16).
    coverage : (float, float)
        ``tan 2θ`` seen at the detector's half-width, which sets the pitch where the pitch
        range allows.
    diameter_mm : (float, float)
        Sample diameter (height 1-1.5 x diameter).
    n_grains : (int, int)
        Grains in the sample, log-uniform.
    materials : tuple of str
    beamstop_probability : float
        Share of instruments with a beam stop.
    max_tilt_deg, max_offset_mm : float
        Detector tilts and offset, uniform in ± these.
    kvp : (float, float)
        Tube voltage.
    level_counts : (float, float)
        Mean background level above the dark offset, log-uniform (a tenth of frames have
        none: a pure dark frame plus spots).
    structure : (float, float)
        Amplitude of the procedural structure relative to the level.
    flat_residual : float
        Largest relative amplitude of the flat-field residual.
    offset_counts, gain, read_noise, correlation : (float, float)
        Detector: dark offset, counts per photon (log-uniform), read noise SD, lag-1
        correlation of the noise (half of the detectors uncorrelated).
    hot_fraction, zinger_rate : float
        Largest share of hot pixels and largest zingers per megapixel per frame.
    median_snr : (float, float)
        Median spot SNR of a frame, log-uniform.
    """

    lss_mm: tuple[float, float] = (10.0, 150.0)
    lsd_mm: tuple[float, float] = (10.0, 300.0)
    pitch_um: tuple[float, float] = (3.0, 75.0)
    binning: tuple[int, int] = (1, 4)
    detector_px: tuple[int, int] = (384, 768)
    coverage: tuple[float, float] = (0.15, 0.45)
    diameter_mm: tuple[float, float] = (0.15, 0.6)
    n_grains: tuple[int, int] = (30, 400)
    materials: tuple[str, ...] = ("Al", "Fe")
    beamstop_probability: float = 0.7
    max_tilt_deg: float = 2.0
    max_offset_mm: float = 0.3
    kvp: tuple[float, float] = (100.0, 160.0)
    level_counts: tuple[float, float] = (5.0, 1500.0)
    structure: tuple[float, float] = (0.1, 1.5)
    flat_residual: float = 0.08
    offset_counts: tuple[float, float] = (0.0, 300.0)
    gain: tuple[float, float] = (0.3, 4.0)
    read_noise: tuple[float, float] = (1.0, 25.0)
    correlation: tuple[float, float] = (0.0, 0.7)
    hot_fraction: float = 1e-3
    zinger_rate: float = 60.0
    median_snr: tuple[float, float] = (0.7, 30.0)

    def __post_init__(self) -> None:
        for name in ("lss_mm", "lsd_mm", "pitch_um", "level_counts", "gain", "median_snr"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise DatasetError(f"{name} must be 0 < low <= high, got {(lo, hi)!r}")
        if not 1 <= self.binning[0] <= self.binning[1]:
            raise DatasetError(f"binning must be 1 <= low <= high, got {self.binning!r}")
        if not 64 <= self.detector_px[0] <= self.detector_px[1]:
            raise DatasetError(f"detector_px must be 64 <= low <= high, got "
                               f"{self.detector_px!r}")
        if not self.materials:
            raise DatasetError("materials must name at least one material")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def random_geometry(rng: np.random.Generator, ranges: BroadRanges = BroadRanges()) -> Geometry:
    """One random instrument geometry (see :class:`BroadRanges`)."""
    lss, lsd = _log_uniform(rng, ranges.lss_mm), _log_uniform(rng, ranges.lsd_mm)
    binning = int(rng.integers(ranges.binning[0], ranges.binning[1] + 1))
    side = int(rng.integers(ranges.detector_px[0] // 16, ranges.detector_px[1] // 16 + 1)) * 16
    wanted = 2.0 * lsd * rng.uniform(*ranges.coverage) / side  # stored pixel for the coverage
    pitch = float(np.clip(wanted / binning, ranges.pitch_um[0] / 1e3, ranges.pitch_um[1] / 1e3))
    geometry = Geometry(
        lss=lss, lsd=lsd, detector_shape=(side, side), pixel_size=pitch * binning,
        tilt=tuple(float(v) for v in rng.uniform(-ranges.max_tilt_deg, ranges.max_tilt_deg, 3)),
        offset=tuple(float(v) for v in rng.uniform(-ranges.max_offset_mm,
                                                   ranges.max_offset_mm, 2)),
        kvp=float(rng.uniform(*ranges.kvp)), beamstop=NO_BEAMSTOP)
    if rng.random() >= ranges.beamstop_probability:
        return geometry
    half = 0.5 * rng.uniform(0.1, 0.4) * side
    rc, cc = beam_center_pixel(geometry)
    rc, cc = (float(np.clip(v, half, side - 1 - half)) for v in (rc, cc))
    return replace(geometry, beamstop=(int(round(rc - half)), int(round(rc + half)),
                                       int(round(cc - half)), int(round(cc + half))))


def broad_acquisitions(n: int, seed: int = 0, ranges: BroadRanges = BroadRanges()
                       ) -> list[Acquisition]:
    """``n`` random samples in random instrument geometries (see :class:`BroadRanges`).

    Examples
    --------
    >>> acqs = broad_acquisitions(3, seed=1)
    >>> [a.geometry.detector_shape[0] % 16 for a in acqs]
    [0, 0, 0]
    """
    out = []
    for k, s in enumerate(np.random.SeedSequence([seed, 7]).spawn(int(n))):
        rng = np.random.default_rng(s)
        geometry = random_geometry(rng, ranges)
        diameter = float(rng.uniform(*ranges.diameter_mm))
        material = str(ranges.materials[rng.integers(len(ranges.materials))])
        n_grains = int(round(_log_uniform(rng, tuple(float(v) for v in ranges.n_grains))))
        spec = SampleSpec(material, diameter, diameter * float(rng.uniform(1.0, 1.5)),
                          n_grains=n_grains, name=f"broad-{material}")
        out.append(Acquisition(f"broad{k:03d}-{material}", spec, geometry,
                               int(rng.integers(2**31))))
    return out


def random_noise_model(rng: np.random.Generator, ranges: BroadRanges = BroadRanges()
                       ) -> NoiseModel:
    """A random detector (see :class:`BroadRanges`)."""
    correlation = float(rng.uniform(*ranges.correlation)) if rng.random() < 0.5 else 0.0
    hot = float(rng.uniform(0, ranges.hot_fraction))
    return NoiseModel(
        offset=float(rng.uniform(*ranges.offset_counts)), gain=_log_uniform(rng, ranges.gain),
        read_noise=float(rng.uniform(*ranges.read_noise)), hot_fraction=hot,
        dead_fraction=0.2 * hot, hot_excess=float(_log_uniform(rng, (30.0, 3000.0))),
        zinger_rate=float(rng.uniform(0, ranges.zinger_rate)),
        zinger_size=float(rng.uniform(1.0, 4.0)),
        zinger_height=float(_log_uniform(rng, (200.0, 30000.0))), correlation=correlation)


def _flat_residual(shape: tuple[int, int], amplitude: float, rng: np.random.Generator
                   ) -> np.ndarray:
    """``1 + e`` with ``e`` a smooth random field of largest magnitude ``amplitude``."""
    coarse = rng.standard_normal((6, 6)).astype(np.float32)
    field = ndimage.zoom(coarse, (shape[0] / 6, shape[1] / 6), order=3)[:shape[0], :shape[1]]
    field *= np.float32(amplitude / max(float(np.abs(field).max()), 1e-6))
    return 1.0 + field


def random_scene(shape: tuple[int, int], geometry: Geometry, rng: np.random.Generator,
                 ranges: BroadRanges = BroadRanges()) -> tuple[np.ndarray, NoiseModel, dict]:
    """A random background in counts (dark offset included) and detector for one frame.

    Returns
    -------
    background : (H, W) float32
    noise : NoiseModel
    meta : dict
        The level, structure and detector drawn.
    """
    noise = random_noise_model(rng, ranges)
    level = 0.0 if rng.random() < 0.1 else _log_uniform(rng, ranges.level_counts)
    structure = float(rng.uniform(*ranges.structure))
    beamstop = geometry.beamstop if geometry.has_beamstop else None
    pattern = ProceduralBackground(shape, beamstop, rng,
                                   center=beam_center_pixel(geometry)).render()
    residual = _flat_residual(shape, float(rng.uniform(0, ranges.flat_residual)), rng)
    background = (np.float32(level) * (np.float32(1 - structure / 2) + np.float32(structure)
                                       * pattern) * residual + np.float32(noise.offset))
    return background.astype(np.float32), noise, {
        "level": level, "structure": structure, "gain": noise.gain,
        "read_noise": noise.read_noise, "correlation": noise.correlation}


def broad_crops(cache: ProjectionCache, rng: np.random.Generator, *,
                ranges: BroadRanges = BroadRanges(),
                crops: CropSettings = CropSettings(),
                projections: Sequence[int] | None = None,
                ) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
    """Endless ``(input, target, meta)`` crops of random instruments' frames.

    Parameters
    ----------
    cache : ProjectionCache
        Projections of :func:`broad_acquisitions` (any acquisitions work).
    rng : numpy.random.Generator
        The only randomness: same state, same crops.
    ranges : BroadRanges
    crops : CropSettings
    projections : sequence of int, optional
        Cache indices to draw from (all when None).
    """
    settings = InstrumentSynthesis(median_snr_range=ranges.median_snr, input="raw", hot=True,
                                   zingers=True)

    def scene(shape, geometry, rng):
        return random_scene(shape, geometry, rng, ranges)

    return scene_crops(cache, scene, rng, settings=settings, crops=crops,
                       projections=projections, exclude="geometry")
