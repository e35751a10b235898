"""Experimental backgrounds from real frames (the paper's Appendix A): spots found and removed,
the holes filled by normalised convolution.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from labdct_live.io.frames import FrameReadError, check_frame
from labdct_live.simulation.background import BackgroundError

__all__ = [
    "spot_mask",
    "remove_spots",
    "extract_backgrounds",
]


def _check_frame(frame, name: str = "frame") -> np.ndarray:
    try:
        return check_frame(frame, name)
    except FrameReadError as exc:
        raise BackgroundError(str(exc)) from exc


def _robust_threshold(image: np.ndarray, k: float) -> float:
    """``median + k * 1.4826 * MAD`` of an image (on a subsample of about 512² pixels)."""
    sample = image[:: max(1, image.shape[0] // 512), :: max(1, image.shape[1] // 512)]
    med = float(np.median(sample))
    mad = float(np.median(np.abs(sample - med)))
    return med + k * 1.4826 * max(mad, 1e-6)


def spot_mask(
    frame: np.ndarray,
    *,
    threshold: float | None = None,
    k: float = 4.0,
    smoothing: float = 1.0,
    max_spot_radius: int = 12,
    max_area: int = 5000,
) -> np.ndarray:
    """Bright spots of a frame by a Sobel filter and a binary threshold (Appendix A).

    The gradient magnitude of the lightly smoothed frame is thresholded and every closed
    edge filled. Edges are also found along the beam stop and other steps of the background,
    so an edge region is kept only if it is a bright blob: its mean white top-hat (the frame
    minus its grey opening by a square of side ``2 * max_spot_radius + 1``) must exceed the
    top-hat noise by ``k`` robust standard deviations; regions larger than ``max_area`` are
    structure, not spots.

    Parameters
    ----------
    frame : (M, N) ndarray
        A raw frame.
    threshold : float or None
        Gradient-magnitude threshold (counts per pixel); ``median + k * 1.4826 * MAD`` of the
        gradient magnitude when None.
    k : float
        Robust standard deviations above the median for the automatic thresholds.
    smoothing : float
        Gaussian SD (px) applied before the Sobel filter, against pixel noise.
    max_spot_radius : int
        Largest spot radius (px) for the top-hat test.
    max_area : int
        Edge regions larger than this (px) are dropped.

    Returns
    -------
    ndarray of bool, shape ``frame.shape``
    """
    frame = _check_frame(frame).astype(np.float32)
    smooth = ndimage.gaussian_filter(frame, smoothing) if smoothing > 0 else frame
    magnitude = np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1))
    if threshold is None:
        threshold = _robust_threshold(magnitude, k)
    edges = ndimage.binary_fill_holes(magnitude > threshold)
    labels, n = ndimage.label(edges)
    if n == 0:
        return edges
    index = np.arange(1, n + 1)
    tophat = smooth - ndimage.grey_opening(smooth, size=2 * int(max_spot_radius) + 1)
    tophat_noise = _robust_threshold(tophat, k)
    keep = (ndimage.mean(tophat, labels, index) > tophat_noise) & (
        np.bincount(labels.ravel(), minlength=n + 1)[1:] <= max_area
    )
    return np.concatenate([[False], keep])[labels]


def remove_spots(
    frame: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    dilation_radius: int = 13,
    mask_sigma: float = 1.0,
    **mask_options,
) -> tuple[np.ndarray, np.ndarray]:
    """Replace the spots of a frame by their surroundings (Appendix A, one frame).

    The spot mask is Gaussian-filtered (SD 1 px, 2 px support: any pixel the filtered mask
    touches is kept) and dilated by a disk of radius ``dilation_radius``; the masked pixels are
    filled by normalised convolution (a Gaussian average of the unmasked neighbours, at a
    scale that grows until every hole is covered).

    Parameters
    ----------
    frame : (M, N) ndarray
        A raw frame.
    mask : (M, N) bool ndarray or None
        Spot pixels; :func:`spot_mask` of the frame (with ``mask_options``) when None.
    dilation_radius : int
        Radius (px) of the disk the mask is dilated by (13 in the paper).
    mask_sigma : float
        SD (px) of the Gaussian applied to the mask before dilation (1 in the paper).

    Returns
    -------
    filled : ndarray of float32
        The frame with its spots replaced.
    fill_mask : ndarray of bool
        The pixels that were replaced.
    """
    frame = _check_frame(frame).astype(np.float32)
    if mask is None:
        mask = spot_mask(frame, **mask_options)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != frame.shape:
        raise BackgroundError(f"mask shape {mask.shape} differs from frame shape {frame.shape}")
    if mask_sigma > 0:
        mask = ndimage.gaussian_filter(mask.astype(np.float32), mask_sigma, truncate=2.0) > 1e-3
    if dilation_radius > 0:
        # A disk dilation via the distance transform: linear time, independent of the radius.
        mask = ndimage.distance_transform_edt(~mask) <= dilation_radius
    filled = frame.copy()
    if not mask.any():
        return filled, mask
    if mask.all():
        raise BackgroundError("the spot mask covers the whole frame: raise the threshold")
    todo = mask.copy()
    sigma = float(max(dilation_radius, 2))
    while todo.any():
        values = _normalised_convolution(frame, ~mask, sigma, np.nonzero(todo))
        ok = np.isfinite(values)
        filled[tuple(i[ok] for i in np.nonzero(todo))] = values[ok]
        todo[tuple(i[ok] for i in np.nonzero(todo))] = False
        sigma *= 2
    return filled, mask


def _normalised_convolution(
    frame: np.ndarray, valid: np.ndarray, sigma: float, where: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Gaussian-weighted mean of the valid pixels around the pixels ``where``.

    Evaluated on a grid coarsened by about ``sigma / 4`` (the Gaussian is smooth on that
    scale) and interpolated bilinearly, which is ~10x faster than at full resolution. Returns
    NaN where no valid pixel is near.
    """
    factor = max(1, int(sigma // 4))
    rows, cols = frame.shape
    pad_r, pad_c = (-rows) % factor, (-cols) % factor
    weight = np.pad(valid.astype(np.float32), ((0, pad_r), (0, pad_c)))
    values = np.pad(frame, ((0, pad_r), (0, pad_c))) * weight
    shape = (weight.shape[0] // factor, factor, weight.shape[1] // factor, factor)
    num = ndimage.gaussian_filter(values.reshape(shape).sum(axis=(1, 3)), sigma / factor)
    den = ndimage.gaussian_filter(weight.reshape(shape).sum(axis=(1, 3)), sigma / factor)
    # Pixel (r, c) sits at coarse coordinate (r - (factor - 1) / 2) / factor.
    coords = [(np.asarray(i, dtype=np.float32) - (factor - 1) / 2) / factor for i in where]
    num_at = ndimage.map_coordinates(num, coords, order=1, mode="nearest")
    den_at = ndimage.map_coordinates(den, coords, order=1, mode="nearest")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den_at > 1e-3 * factor**2, num_at / den_at, np.nan).astype(np.float32)


def _median_over_frames(frames: np.ndarray, block_rows: int = 128) -> np.ndarray:
    """Pixel-wise median over axis 0, in row blocks to bound temporary memory."""
    out = np.empty(frames.shape[1:], dtype=np.float32)
    for start in range(0, frames.shape[1], block_rows):
        out[start: start + block_rows] = np.median(frames[:, start: start + block_rows], axis=0)
    return out


def extract_backgrounds(
    stack: np.ndarray | Sequence[np.ndarray] | Iterable[np.ndarray],
    *,
    window: int = 60,
    stride: int | None = None,
    progress: bool = True,
    **remove_options,
) -> np.ndarray:
    """Background images from a stack of experimental frames (seed paper, Appendix A).

    Every frame has its spots removed (:func:`remove_spots`); the median of each run of
    ``window`` sequential frames is one background, divided by its maximum.

    Parameters
    ----------
    stack : (n, M, N) array or sequence of (M, N) frames
        Sequential projections (an array, a memory map or a list; frames are read one at a
        time).
    window : int
        Frames per median (about 60 in the paper).
    stride : int or None
        Step between windows; ``window`` (non-overlapping) when None.
    progress : bool
        Show a progress bar.
    **remove_options
        Passed to :func:`remove_spots` (and on to :func:`spot_mask`).

    Returns
    -------
    ndarray of float32, shape ``(k, M, N)``
        ``k = 1 + (n - window) // stride`` backgrounds in ``[0, 1]``.

    Raises
    ------
    BackgroundError
        A stack shorter than the window, frames of different shapes, non-finite values.
    """
    from tqdm.auto import tqdm

    n = len(stack)
    window = int(window)
    stride = window if stride is None else int(stride)
    if window < 1 or stride < 1:
        raise BackgroundError(f"window and stride must be >= 1, got {window} and {stride}")
    if n < window:
        raise BackgroundError(
            f"the stack has {n} frames, fewer than window={window}: pass a longer stack or a "
            "smaller window"
        )
    first = _check_frame(stack[0], "stack[0]")
    starts = list(range(0, n - window + 1, stride))
    buffer = np.empty((window,) + first.shape, dtype=np.float32)
    filled_at: dict[int, int] = {}  # frame index -> buffer slot
    out = np.empty((len(starts),) + first.shape, dtype=np.float32)
    bar = tqdm(total=starts[-1] + window, desc="background frames", disable=not progress)
    for k, start in enumerate(starts):
        for i in range(start, start + window):
            if i in filled_at:
                continue
            frame = _check_frame(stack[i], f"stack[{i}]")
            if frame.shape != first.shape:
                raise BackgroundError(
                    f"stack[{i}] has shape {frame.shape}, stack[0] {first.shape}: all frames "
                    "must have one shape"
                )
            slot = i % window  # slots of frames before this window are free again
            buffer[slot] = remove_spots(frame, **remove_options)[0]
            filled_at = {j: s for j, s in filled_at.items() if j >= start and s != slot}
            filled_at[i] = slot
            bar.update(1)
        median = _median_over_frames(buffer)
        peak = float(median.max())
        if peak <= 0:
            raise BackgroundError(f"window starting at frame {start} has no positive pixel")
        out[k] = median / peak
    bar.close()
    return out
