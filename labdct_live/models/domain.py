"""Is a frame like the frames a model was trained on? A cheap check of the network's input.

A U-Net answers for any input; on frames unlike its training data it answers wrongly without
saying so (docs/real-frames.md: the shipped model on a real far-field scan). The check
measures a few statistics of the *normalised* frame the network sees
(:func:`~labdct_live.segmentation.normalization.normalize_frame`), on four 256² windows:

``noise``
    robust SD of the high-pass residual (frame minus its 2-px Gaussian blur, MAD × 1.4826,
    corrected for the blur): how much of the frame's range is pixel noise;
``correlation``
    lag-1 correlation of that residual between neighbouring pixels (rows and columns): 0 for
    a detector with independent pixels, 0.3-0.7 for a binned or blurred one;
``structure``
    robust SD of the band-pass image (2-px minus 8-px Gaussian blur) over the noise: 0.1-0.2
    for noise on a smooth background, more for streaks, texture or crowded spots;
``bright_fraction``
    share of pixels above 3 (three times the 99th-percentile scale): spots and hot pixels.

The training data's range of each (1st-99th percentile over sampled training frames) is
stored in the checkpoint (``metrics["input_domain"]``, :func:`domain_ranges`);
:class:`DomainCheck` flags a frame whose statistic lies outside that range widened by a
margin. The ``dl`` method logs a warning when a scan's frames start or stop being flagged
and reports the flags per frame (``ProcessedFrame.extra["out_of_domain"]``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from labdct_live.segmentation.normalization import normalize_frame

__all__ = ["DOMAIN_STATISTICS", "DomainCheck", "domain_ranges", "input_statistics"]

logger = logging.getLogger(__name__)

DOMAIN_STATISTICS = ("noise", "correlation", "structure", "bright_fraction")
#: Side of the windows the statistics are measured on, pixels.
WINDOW = 256
_BLUR = 2.0


def _windows(shape: tuple[int, int], side: int = WINDOW) -> list[tuple[slice, slice]]:
    rows, cols = shape
    h, w = min(side, rows), min(side, cols)
    starts_r = sorted({int(round((rows - h) * f)) for f in (0.2, 0.8)})
    starts_c = sorted({int(round((cols - w) * f)) for f in (0.2, 0.8)})
    return [(slice(r, r + h), slice(c, c + w)) for r in starts_r for c in starts_c]


def input_statistics(frame: np.ndarray, exclude: np.ndarray | None = None,
                     normalized: bool = False) -> dict[str, float]:
    """The :data:`DOMAIN_STATISTICS` of one frame (see the module docstring).

    Parameters
    ----------
    frame : (M, N) array
        Raw counts, or the network's input with ``normalized=True``.
    exclude : (M, N) bool, optional
        Pixels left out (the beam stop).
    normalized : bool
        ``frame`` is already :func:`normalize_frame`'s output.

    Returns
    -------
    dict of str to float

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> white = rng.poisson(500, (512, 512)).astype(np.float32)
    >>> blurred = ndimage.gaussian_filter(white, 1.0)
    >>> round(input_statistics(white)["correlation"], 1), input_statistics(blurred)[
    ...     "correlation"] > 0.5
    (0.0, True)
    """
    x = np.asarray(frame, dtype=np.float32) if normalized else normalize_frame(frame)
    valid = np.ones(x.shape, bool) if exclude is None else ~np.asarray(exclude, bool)
    residuals, bands, masks = [], [], []
    for window in _windows(x.shape):
        crop = x[window]
        smooth = ndimage.gaussian_filter(crop, _BLUR, mode="reflect")
        residuals.append(crop - smooth)
        bands.append(smooth - ndimage.gaussian_filter(crop, 4 * _BLUR, mode="reflect"))
        masks.append(valid[window])
    r = np.concatenate([a[m] for a, m in zip(residuals, masks)])
    if r.size < 100:
        return {name: float("nan") for name in DOMAIN_STATISTICS}
    mad = float(np.median(np.abs(r - np.median(r))))
    # the residual of white noise keeps 1 - 1/(4 pi sigma^2) of its variance after the blur
    noise = 1.4826 * mad / np.sqrt(1.0 - 1.0 / (4 * np.pi * _BLUR ** 2))
    u_parts, v_parts = [], []
    for a, m in zip(residuals, masks):
        ok = m & (np.abs(a) < 5 * 1.4826 * mad + 1e-12)  # spots out of the correlation
        down, right = ok[1:, :] & ok[:-1, :], ok[:, 1:] & ok[:, :-1]
        u_parts += [a[1:, :][down], a[:, 1:][right]]
        v_parts += [a[:-1, :][down], a[:, :-1][right]]
    u, v = np.concatenate(u_parts), np.concatenate(v_parts)
    denominator = float(np.sqrt(np.mean(u * u) * np.mean(v * v)))
    correlation = float(np.mean(u * v) / denominator) if denominator > 0 else 0.0
    # the blur's own residual correlation for white noise, so independent pixels score ~0
    correlation = (correlation - _WHITE_CORRELATION) / (1.0 - _WHITE_CORRELATION)
    band = np.concatenate([a[m] for a, m in zip(bands, masks)])
    structure = float(1.4826 * np.median(np.abs(band - np.median(band))) / max(noise, 1e-12))
    bright = float(np.mean(x[valid] > 3.0)) if valid.any() else float("nan")
    return {"noise": float(noise), "correlation": correlation, "structure": structure,
            "bright_fraction": bright}


def _white_correlation() -> float:
    """Lag-1 correlation of the 2-px high-pass residual of white noise (about -0.04)."""
    kernel = np.zeros((41, 41))
    kernel[20, 20] = 1.0
    response = kernel - ndimage.gaussian_filter(kernel, _BLUR, mode="constant")
    return float(np.sum(response[1:, :] * response[:-1, :]) / np.sum(response ** 2))


_WHITE_CORRELATION = _white_correlation()


def domain_ranges(frames: Iterable[np.ndarray], low: float = 1.0, high: float = 99.0,
                  normalized: bool = False, include: Mapping | None = None) -> dict:
    """The range of each statistic over training frames (to store with a model).

    Parameters
    ----------
    frames : iterable of (M, N) arrays
        Training inputs (raw counts, or normalised with ``normalized=True``).
    low, high : float
        Percentiles of the range.
    include : mapping, optional
        A range (an earlier result) the returned one must cover too, e.g. the synthetic
        training inputs' when ``frames`` are a user's own frames.

    Returns
    -------
    dict
        ``{name: [low value, high value], ..., "frames": n}``.
    """
    values: dict[str, list[float]] = {name: [] for name in DOMAIN_STATISTICS}
    n = 0
    for frame in frames:
        stats = input_statistics(frame, normalized=normalized)
        for name in DOMAIN_STATISTICS:
            if np.isfinite(stats[name]):
                values[name].append(stats[name])
        n += 1
    if n == 0:
        raise ValueError("no frames to measure a domain from")
    out: dict = {name: [float(np.percentile(v, low)), float(np.percentile(v, high))]
                 for name, v in values.items() if v}
    out["frames"] = n
    for name, bounds in (include or {}).items():
        if name in out and isinstance(bounds, (list, tuple)) and len(bounds) == 2:
            out[name] = [min(out[name][0], float(bounds[0])), max(out[name][1], float(bounds[1]))]
    if include:
        out["frames"] += int(include.get("frames", 0))
    return out


@dataclass
class DomainCheck:
    """Flags frames outside a model's training range (see the module docstring).

    Parameters
    ----------
    ranges : mapping
        ``{statistic: (low, high)}`` (:func:`domain_ranges`).
    margin : float
        Each range is widened by this share of its width on both sides (and by at least
        0.02 absolute), so that frames at the edge of the training data pass.
    """

    ranges: Mapping[str, tuple[float, float]]
    margin: float = 0.25

    @classmethod
    def from_metadata(cls, metadata: Mapping) -> DomainCheck | None:
        """The check stored with a model (``metrics["input_domain"]``), None without one."""
        domain = (metadata.get("metrics") or {}).get("input_domain")
        if not isinstance(domain, Mapping):
            return None
        ranges = {k: (float(v[0]), float(v[1])) for k, v in domain.items()
                  if k in DOMAIN_STATISTICS and isinstance(v, (list, tuple)) and len(v) == 2}
        return cls(ranges) if ranges else None

    def __call__(self, frame: np.ndarray, exclude: np.ndarray | None = None,
                 normalized: bool = False) -> dict[str, float]:
        """The statistics of ``frame`` that lie outside the widened ranges (empty: in range)."""
        stats = input_statistics(frame, exclude, normalized)
        out = {}
        for name, (lo, hi) in self.ranges.items():
            pad = max(self.margin * (hi - lo), 0.02)
            value = stats.get(name, float("nan"))
            if np.isfinite(value) and not lo - pad <= value <= hi + pad:
                out[name] = value
        return out

    def describe(self, flags: Mapping[str, float]) -> str:
        """One sentence for a log."""
        parts = [f"{name} {value:.3g} (trained on {self.ranges[name][0]:.3g}-"
                 f"{self.ranges[name][1]:.3g})" for name, value in flags.items()]
        return ("frame statistics outside the model's training data: " + ", ".join(parts)
                + "; its segmentation may be unreliable (docs/adapt.md: adapt it to this "
                  "instrument)")
