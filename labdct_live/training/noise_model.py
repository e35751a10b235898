"""A detector's noise estimated from its own frames, and applied to clean simulated images.

A LabDCT scan is a stack of frames of one static background through which the diffraction
spots move with ω. The per-pixel median of the stack is therefore the background (spots
cover a pixel in few frames), and each frame minus that median is noise plus the frame's
own spots. From those residuals (:func:`estimate_noise`):

* **photon transfer**: the residual variance (robust: 1.4826 × MAD, so spots do not count)
  in bins of the background level ``μ`` is fitted by ``Var = g (μ - offset) + σ_read²``:
  the slope is the gain ``g`` (counts per detected photon), the intercept the read noise.
  The dark ``offset`` is not identifiable from one illumination; it is taken as the 0.5th
  percentile of the median image (the darkest pixels, under the beam stop), an upper bound
  of the true dark level, unless given;
* **spatial correlation**: the lag-1 correlation of the residual noise (a blurred, binned
  detector's neighbouring pixels share noise);
* **hot and dead pixels**: static outliers of the median image against its 5 × 5 median
  (above / below ``± k σ``), or pixels that never change;
* **zingers**: single-frame sharp spikes (a pixel far above the frame's background and
  above each of its 8 neighbours by half its height: sharper than the point spread): their
  rate per megapixel and frame, size and height.

:meth:`NoiseModel.apply` turns a clean image in counts (background plus spots) into a noisy
frame: ``offset + g · Poisson((x - offset) / g) + N(0, σ_read²)``, the noise field blurred
to the measured correlation (its variance kept), hot and dead pixels at
their measured rates, zingers, clipping at saturation. It replaces the paper's Eq. 2 when
the noise of a real detector is known (:mod:`labdct_live.training.instrument_data`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

__all__ = ["NoiseModel", "NoiseModelError", "estimate_noise", "stack_median"]


class NoiseModelError(ValueError):
    """Frames from which no noise model can be estimated, or invalid model values."""


@dataclass(frozen=True)
class NoiseModel:
    """Detector noise in counts (see the module docstring).

    Attributes
    ----------
    offset : float
        Dark level, counts.
    gain : float
        Counts per detected photon (slope of variance against level); 0 for pure read noise.
    read_noise : float
        SD of the signal-independent noise, counts.
    hot_fraction, dead_fraction : float
        Shares of pixels that are hot (static, above their neighbours) or dead (stuck).
    hot_excess : float
        Median excess of hot pixels over their neighbourhood, counts.
    zinger_rate : float
        Zingers per megapixel per frame.
    zinger_size : float
        Mean zinger size, pixels.
    zinger_height : float
        Median zinger peak above the background, counts.
    saturation : float
        Largest value a pixel can take (the dtype's maximum for integer frames).
    level_range : (float, float)
        Background levels over which the photon-transfer fit was made.
    noise_at_median : float
        Residual noise SD at the median background level, counts.
    frames : int
        Frames used.
    correlation : float
        Correlation of the noise of neighbouring pixels (lag 1, rows and columns averaged);
        :meth:`apply` blurs the noise field with the Gaussian that gives it (variance kept).
    """

    offset: float = 0.0
    gain: float = 1.0
    read_noise: float = 0.0
    hot_fraction: float = 0.0
    dead_fraction: float = 0.0
    hot_excess: float = 0.0
    zinger_rate: float = 0.0
    zinger_size: float = 1.0
    zinger_height: float = 0.0
    saturation: float = 65535.0
    level_range: tuple[float, float] = (0.0, 0.0)
    noise_at_median: float = 0.0
    frames: int = 0
    correlation: float = 0.0

    def __post_init__(self) -> None:
        for name in ("gain", "read_noise", "hot_fraction", "dead_fraction", "hot_excess",
                     "zinger_rate", "zinger_height"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise NoiseModelError(f"{name} must be a finite value >= 0, got {value!r}")
        if not 0.0 <= float(self.correlation) < 0.95:
            raise NoiseModelError(f"correlation must be in [0, 0.95), got {self.correlation!r}")
        if self.hot_fraction + self.dead_fraction > 0.5:
            raise NoiseModelError("hot and dead pixels cannot be half of the detector")
        if not self.saturation > self.offset:
            raise NoiseModelError(f"saturation {self.saturation} must exceed the offset "
                                  f"{self.offset}")
        object.__setattr__(self, "level_range", tuple(float(v) for v in self.level_range))

    def sd(self, level: np.ndarray | float) -> np.ndarray:
        """Noise SD (counts) at mean level(s) ``level``."""
        signal = np.maximum(np.asarray(level, dtype=np.float64) - self.offset, 0.0)
        return np.sqrt(self.gain * signal + self.read_noise ** 2)

    @property
    def blur_sigma(self) -> float:
        """SD (px) of the Gaussian whose (discrete) blur of white noise has lag-1 correlation
        :attr:`correlation`; 0 for uncorrelated noise."""
        if self.correlation <= 0.005:
            return 0.0
        lo, hi = 0.05, 5.0
        for _ in range(40):  # the lag-1 correlation grows with sigma
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if _lag1(mid) < self.correlation else (lo, mid)
        return float(0.5 * (lo + hi))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["level_range"] = list(self.level_range)
        return d

    @classmethod
    def from_dict(cls, values: dict) -> NoiseModel:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def apply(self, clean: np.ndarray, rng: np.random.Generator, *, hot: bool = True,
              zingers: bool = True) -> np.ndarray:
        """A noisy float32 frame from a clean one in counts (offset included).

        Parameters
        ----------
        clean : ndarray
            Expected counts: background (with the dark offset) plus spots.
        rng : numpy.random.Generator
        hot : bool
            Add hot and dead pixels at their rates (leave False when the background already
            carries the detector's own, e.g. one extracted from its frames).
        zingers : bool
            Add zingers at their rate.
        """
        clean = np.asarray(clean, dtype=np.float32)
        signal = np.maximum(clean - np.float32(self.offset), 0)
        if self.gain > 0:
            x = rng.poisson(signal / np.float32(self.gain)).astype(np.float32)
            x *= np.float32(self.gain)
        else:
            x = signal.copy()
        x += np.float32(self.offset)
        if self.read_noise > 0:
            x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(self.read_noise)
        sigma = self.blur_sigma
        if sigma > 0:  # correlated noise: blur the noise field, keep its variance
            x -= clean
            x = ndimage.gaussian_filter(x, sigma, mode="reflect") / np.float32(
                _blur_gain(sigma))
            x += clean
        n = x.size
        if hot and self.hot_fraction > 0:
            k = rng.binomial(n, self.hot_fraction)
            idx = rng.integers(0, n, k)
            x.flat[idx] += np.float32(self.hot_excess) * np.exp(
                0.5 * rng.standard_normal(k)).astype(np.float32)
        if hot and self.dead_fraction > 0:
            k = rng.binomial(n, self.dead_fraction)
            x.flat[rng.integers(0, n, k)] = np.float32(self.offset)
        if zingers and self.zinger_rate > 0 and self.zinger_height > 0:
            _add_zingers(x, rng, self.zinger_rate * n / 1e6, self.zinger_size,
                         self.zinger_height)
        np.clip(x, 0, self.saturation, out=x)
        return x


def _kernel(sigma: float) -> np.ndarray:
    delta = np.zeros(33, np.float64)
    delta[16] = 1.0
    return ndimage.gaussian_filter1d(delta, sigma, mode="constant")


def _lag1(sigma: float) -> float:
    """Lag-1 correlation of white noise blurred by a discrete Gaussian of SD ``sigma``."""
    k = _kernel(sigma)
    return float((k[1:] * k[:-1]).sum() / (k ** 2).sum())


def _blur_gain(sigma: float) -> float:
    """SD of Gaussian-blurred unit white noise (the blur's L2 norm)."""
    delta = np.zeros((33, 33), np.float64)
    delta[16, 16] = 1.0
    kernel = ndimage.gaussian_filter(delta, sigma, mode="constant")
    return float(np.sqrt((kernel ** 2).sum()))


def _add_zingers(x: np.ndarray, rng: np.random.Generator, mean_count: float, size: float,
                 height: float) -> None:
    rows, cols = x.shape
    for _ in range(int(rng.poisson(mean_count))):
        r, c = int(rng.integers(rows)), int(rng.integers(cols))
        amplitude = np.float32(height * rng.uniform(0.5, 1.5))
        x[r, c] += amplitude
        for _ in range(max(0, int(round(rng.exponential(max(size - 1, 1e-3)))))):
            rr = min(max(r + int(rng.integers(-1, 2)), 0), rows - 1)
            cc = min(max(c + int(rng.integers(-1, 2)), 0), cols - 1)
            x[rr, cc] += amplitude * np.float32(rng.uniform(0.3, 1.0))


def _as_stack(frames: np.ndarray | Sequence[np.ndarray], max_frames: int) -> np.ndarray:
    n = len(frames)
    if n < 3:
        raise NoiseModelError(f"{n} frames: at least 3 are needed to estimate the noise")
    chosen = np.unique(np.linspace(0, n - 1, min(n, int(max_frames))).round().astype(int))
    stack = np.stack([np.asarray(frames[int(k)]) for k in chosen])
    if stack.ndim != 3:
        raise NoiseModelError(f"frames must be 2-D images, got shape {stack.shape[1:]}")
    if not np.all(np.isfinite(stack)):
        raise NoiseModelError("frames hold NaN or infinite values")
    return stack


def stack_median(frames: np.ndarray | Sequence[np.ndarray], max_frames: int = 121,
                 block_rows: int = 128) -> np.ndarray:
    """Per-pixel median of (up to ``max_frames`` evenly spaced) frames, float32."""
    stack = _as_stack(frames, max_frames)
    out = np.empty(stack.shape[1:], dtype=np.float32)
    for r in range(0, stack.shape[1], block_rows):
        out[r:r + block_rows] = np.median(stack[:, r:r + block_rows], axis=0)
    return out


_RING = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], bool)


def _robust_sd(values: np.ndarray) -> float:
    if values.size == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def valid_mask(exclude: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """Pixels outside ``exclude`` (all when None)."""
    return np.ones(shape, bool) if exclude is None else ~np.asarray(exclude, bool)


def estimate_noise(frames: np.ndarray | Sequence[np.ndarray], *,
                   exclude: np.ndarray | None = None, offset: float | None = None,
                   max_frames: int = 40, bins: int = 16, outlier_k: float = 8.0,
                   zinger_k: float = 20.0, median: np.ndarray | None = None,
                   smooth: float = 8.0, seed: int = 0) -> NoiseModel:
    """Estimate a :class:`NoiseModel` from a scan's frames (see the module docstring).

    Parameters
    ----------
    frames : (n, H, W) array or sequence of frames
        At least 3 frames of one scan (spots move between them).
    exclude : (H, W) bool array, optional
        Pixels left out of the zinger and hot-pixel search (e.g. the beam stop); they still
        enter the photon-transfer fit (their dark level gives it its lever arm).
    offset : float, optional
        Known dark level; the 0.5th percentile of the median image when None.
    max_frames : int
        Evenly spaced frames used (memory and time).
    bins : int
        Background-level bins of the photon-transfer fit.
    outlier_k, zinger_k : float
        Hot/dead pixel and zinger thresholds, in noise SDs.
    median : (H, W) array, optional
        The stack median when already computed (:func:`stack_median`).
    smooth : float
        SD (px) of the Gaussian that takes each residual's slow variation out of the fit.
    seed : int
        Chooses the pixels sampled for the fit.
    """
    stack = _as_stack(frames, max_frames)
    n, rows, cols = stack.shape
    dtype = stack.dtype
    saturation = float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else float(
        stack.max())
    med = stack_median(stack, max_frames=n) if median is None else np.asarray(
        median, dtype=np.float32)
    if med.shape != (rows, cols):
        raise NoiseModelError(f"median image {med.shape} differs from the frames' "
                              f"{(rows, cols)}")
    valid = np.ones((rows, cols), bool) if exclude is None else ~np.asarray(exclude, bool)
    # Photon transfer on a random sample of pixels of every frame.
    rng = np.random.default_rng(seed)
    n_sample = min(rows * cols, 200_000)
    pix = rng.choice(rows * cols, n_sample, replace=False)
    levels = med.ravel()[pix]
    res = np.empty((n, n_sample), np.float32)
    for k in range(n):
        # The frame's own slow change of background (the sample's shadow moves with ω,
        # the source drifts) is not pixel noise: take it out with a wide Gaussian.
        r = stack[k].astype(np.float32) - med
        r -= ndimage.gaussian_filter(np.clip(r, -200.0, 200.0), smooth, mode="reflect")
        # integer counts: a uniform dither keeps the MAD from sticking to whole numbers
        res[k] = r.ravel()[pix] + rng.uniform(-0.5, 0.5, n_sample).astype(np.float32)
    # the median of n frames has variance ~ pi/(2n) sigma^2 and is correlated with each frame
    correction = 1.0 + math.pi / (2 * n) - 2.0 / n
    edges = np.unique(np.quantile(levels, np.linspace(0.002, 0.998, bins + 1)))
    # lag-1 correlation of the residual noise (rows and columns), from the middle frame
    mid = stack[n // 2].astype(np.float32) - med
    mid -= ndimage.gaussian_filter(np.clip(mid, -200.0, 200.0), smooth, mode="reflect")
    sd_mid = _robust_sd(mid[valid_mask(exclude, mid.shape)])
    quiet = (np.abs(mid) < 4 * sd_mid) & valid_mask(exclude, mid.shape)
    pairs_r = quiet[1:] & quiet[:-1]
    pairs_c = quiet[:, 1:] & quiet[:, :-1]
    var0 = float(np.mean(mid[quiet] ** 2))
    rho = 0.5 * (float(np.mean((mid[1:] * mid[:-1])[pairs_r]))
                 + float(np.mean((mid[:, 1:] * mid[:, :-1])[pairs_c]))) / max(var0, 1e-12)
    mu, var, weight = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (levels >= lo) & (levels < hi)
        if sel.sum() < 50:
            continue
        r = res[:, sel].ravel()
        mu.append(float(np.mean(levels[sel])))
        var.append(_robust_sd(r) ** 2 / correction)
        weight.append(float(sel.sum()))
    if len(mu) < 1:
        raise NoiseModelError("the frames have too few pixels to estimate the noise")
    mu_a, var_a, w = np.array(mu), np.array(var), np.array(weight)
    if len(mu) >= 3 and np.ptp(mu_a) > 1e-6:
        slope, intercept = np.polyfit(mu_a, var_a, 1, w=np.sqrt(w))
    else:
        slope, intercept = 0.0, float(np.average(var_a, weights=w))
    slope = max(float(slope), 0.0)
    if slope == 0.0:
        intercept = float(np.average(var_a, weights=w))
    dark = float(np.percentile(med, 0.5)) if offset is None else float(offset)
    read2 = intercept + slope * dark
    if read2 < 0:  # the offset bound is too high for a pure Poisson detector
        dark = max(-intercept / slope, 0.0) if slope > 0 else 0.0
        read2 = 0.0
    model = dict(offset=dark, gain=slope, read_noise=math.sqrt(max(read2, 0.0)),
                 saturation=saturation, correlation=float(np.clip(rho, 0.0, 0.9)),
                 level_range=(float(mu_a.min()), float(mu_a.max())),
                 frames=n)
    level_median = float(np.median(med[valid])) if valid.any() else float(np.median(med))
    sd_fn = NoiseModel(**model).sd
    model["noise_at_median"] = float(sd_fn(level_median))

    # Hot and dead pixels: static outliers of the median image.
    local = ndimage.median_filter(med, size=5, mode="reflect")
    sd_local = sd_fn(local).astype(np.float32)
    dev = med - local
    hot = (dev > outlier_k * sd_local) & valid
    stuck = (stack.max(axis=0) == stack.min(axis=0)) & valid
    dead = ((dev < -outlier_k * sd_local) | stuck) & valid & ~hot
    n_valid = max(int(valid.sum()), 1)
    model.update(hot_fraction=float(hot.sum() / n_valid), dead_fraction=float(dead.sum() / n_valid),
                 hot_excess=float(np.median(dev[hot])) if hot.any() else 0.0)

    # Zingers: single-frame, sharp spikes.
    count, sizes, heights = 0, [], []
    for k in range(n):
        frame = stack[k].astype(np.float32)
        r = frame - med
        candidate = (r > zinger_k * sd_local) & valid & ~hot
        if not candidate.any():
            continue
        # sharper than the detector's point spread: far above every one of its 8 neighbours
        ring = ndimage.maximum_filter(frame, footprint=_RING, mode="reflect")
        sharp = candidate & (frame - ring > 0.5 * r)
        if not sharp.any():
            continue
        grown = ndimage.binary_dilation(sharp) & (r > 0.25 * zinger_k * sd_local)
        labels, m = ndimage.label(grown)
        count += m
        idx = np.arange(1, m + 1)
        sizes += list(ndimage.sum(np.ones_like(r), labels, idx))
        heights += list(ndimage.maximum(r, labels, idx))
    model.update(zinger_rate=float(count / n / (rows * cols / 1e6)),
                 zinger_size=float(np.mean(sizes)) if sizes else 1.0,
                 zinger_height=float(np.median(heights)) if heights else 0.0)
    return NoiseModel(**model)
