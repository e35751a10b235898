"""One threshold and a minimum spot size: the segmentation of a denoised (or any) frame."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "threshold_segment",
    "remove_small_components",
    "FOUR_CONNECTIVITY",
]


#: Structuring element for 4-connected labelling.
FOUR_CONNECTIVITY = ndi.generate_binary_structure(2, 1)


def _as_exclude_mask(exclude: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    if exclude is None:
        return np.zeros(shape, dtype=np.bool_)
    exclude = np.asarray(exclude, dtype=bool)
    if exclude.shape != shape:
        raise ValueError(
            f"exclude (beam-stop) mask has shape {exclude.shape}, frames have {shape}")
    return exclude


def remove_small_components(mask: np.ndarray, min_size: int) -> tuple[np.ndarray, int]:
    """Label a mask (4-connectivity) and drop components smaller than ``min_size``.

    Returns
    -------
    labels : ndarray of int32
        Consecutive labels 1..n of the kept components, 0 elsewhere.
    n : int
        Number of kept components.
    """
    labels, n = ndi.label(mask, structure=FOUR_CONNECTIVITY)
    if n == 0:
        return labels.astype(np.int32, copy=False), 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    keep[0] = False
    relabel = np.zeros(n + 1, dtype=np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return relabel[labels], int(keep.sum())


def threshold_segment(image: np.ndarray, threshold: float, min_size: int = 1,
                      exclude: np.ndarray | None = None) -> np.ndarray:
    """Segment spots by one threshold (for denoised images, e.g. the U-Net output).

    Parameters
    ----------
    image : (rows, cols) array
        Denoised image.
    threshold : float
        Pixels strictly above it are spot pixels (the paper uses 5 of 255).
    min_size : int
        Smallest 4-connected component kept (pixels).
    exclude : ndarray of bool, optional
        Pixels never segmented (the beam stop).

    Returns
    -------
    ndarray of uint8
        Spot mask {0, 1}.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D (rows, cols), got shape {image.shape}")
    if int(min_size) != min_size or min_size < 1:
        raise ValueError(f"min_size must be a whole number of pixels >= 1, got {min_size!r}")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    mask = image > threshold
    if exclude is not None:
        mask &= ~_as_exclude_mask(exclude, image.shape)
    labels, _ = remove_small_components(mask, int(min_size))
    return (labels > 0).astype(np.uint8)
