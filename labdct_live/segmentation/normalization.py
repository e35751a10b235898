"""The per-frame input normalisation shared by training and inference.

Training inputs (:mod:`labdct_live.training.synthesis`, :mod:`labdct_live.training`) and the frames
the
U-Net sees at inference (:mod:`labdct_live.models.inference`) are scaled by the same function,
:func:`normalize_frame`, so that a network trained on synthetic frames sees real frames on
the same scale (docs/physics.md §6).
"""

from __future__ import annotations

import numpy as np

from labdct_live.io.frames import check_frame

__all__ = ["NORMALIZE_PERCENTILES", "NORMALIZE_SAMPLES", "normalization_stride",
           "normalization_stats", "normalize_frame"]

#: Percentiles (low, high) of :func:`normalize_frame`.
NORMALIZE_PERCENTILES = (50.0, 99.0)

#: At most this many pixels (a regular subsample) enter the normalisation percentiles.
NORMALIZE_SAMPLES = 1 << 18


def normalization_stride(shape: tuple[int, int]) -> int:
    """Row and column step of the regular subsample :func:`normalization_stats` uses: the
    smallest that leaves at most :data:`NORMALIZE_SAMPLES` pixels (4 for a 2032² frame)."""
    return max(1, int(np.ceil(np.sqrt(shape[0] * shape[1] / NORMALIZE_SAMPLES))))


def normalization_stats(frame: np.ndarray,
                        percentiles: tuple[float, float] = NORMALIZE_PERCENTILES,
                        ) -> tuple[float, float]:
    """``(center, spread)`` of :func:`normalize_frame`: the low percentile and high - low.

    Percentiles are taken on a regular subsample of about 262 000 pixels (every 4th row and
    column of a 2032² frame), which is ~10x faster than on the whole frame and differs from it
    by well under a percent. A flat frame gets spread 1.
    """
    frame = check_frame(frame)
    low, high = percentiles
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    stride = normalization_stride(frame.shape)
    sample = frame[::stride, ::stride].astype(np.float32, copy=False)
    center, top = np.percentile(sample, [low, high])
    spread = float(top - center)
    if not spread > 0:
        spread = 1.0
    return float(center), spread


def normalize_frame(frame: np.ndarray, stats: tuple[float, float] | None = None,
                    percentiles: tuple[float, float] = NORMALIZE_PERCENTILES) -> np.ndarray:
    """Robust per-frame scaling shared by training and inference.

    ``(frame - p50) / (p99 - p50)`` with the percentiles of the whole frame
    (:func:`normalization_stats`). The median is the typical background level (spots and the
    beam stop each cover well under half a frame) and the 99th percentile sits at the bright
    end of the background and its noise, so a real frame (median ≈ 590 counts) and a synthetic
    one (≈ 80) map to the same range: background near 0 and about 1 at the top of its range,
    the beam stop negative, spots above, without clipping. Tiles of a large frame must use the
    statistics of the whole frame (pass ``stats``).

    Parameters
    ----------
    frame : (M, N) array
        Raw counts (any integer or float dtype).
    stats : (center, spread) or None
        Precomputed :func:`normalization_stats`.
    percentiles : (float, float)
        The low and high percentiles.

    Returns
    -------
    ndarray of float32
    """
    frame = check_frame(frame)
    center, spread = normalization_stats(frame, percentiles) if stats is None else stats
    out = frame.astype(np.float32)
    out -= np.float32(center)
    out *= np.float32(1.0 / spread)
    return out
