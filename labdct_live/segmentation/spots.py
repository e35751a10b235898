"""Spot tables: label a binary mask (4-connectivity) and measure each spot in the one schema
of :mod:`labdct_live.segmentation.spot_schema`.
"""

from __future__ import annotations

import numba
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from labdct_live.segmentation.threshold import FOUR_CONNECTIVITY

__all__ = [
    "label_spots",
    "as_labels",
    "spot_table",
]


def label_spots(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected labels of a binary mask: ``(labels int32, n)``."""
    labels, n = ndi.label(np.asarray(mask) > 0, structure=FOUR_CONNECTIVITY)
    return labels.astype(np.int32, copy=False), int(n)


def as_labels(image: np.ndarray) -> np.ndarray:
    """A label image from a label image or a binary mask.

    An integer image with more than one non-zero value is taken as labels; anything else
    (a 0/1 or 0/255 mask, a float mask) is thresholded at 0 and labelled by 4-connectivity.
    """
    image = np.asarray(image)
    if image.dtype.kind in "iu":
        positive = image[image > 0]
        if positive.size and positive.min() != positive.max():
            return image.astype(np.int64, copy=False)
    return label_spots(image > 0)[0]


@numba.njit(cache=True, nogil=True)
def _label_stats(labels, values, n):  # pragma: no cover (jit)
    """One pass over a label image: per-label sums, extremes and bounding boxes."""
    area = np.zeros(n + 1, dtype=np.int64)
    stats = np.zeros((n + 1, 6))  # total, weight, weight*row, weight*col, row, col
    peak = np.full(n + 1, -np.inf)
    box = np.empty((n + 1, 4), dtype=np.int64)  # row_min, row_max, col_min, col_max
    box[:, 0] = box[:, 2] = np.iinfo(np.int64).max
    box[:, 1] = box[:, 3] = -1
    rows, cols = labels.shape
    for r in range(rows):
        for c in range(cols):
            k = labels[r, c]
            if k <= 0:
                continue
            v = values[r, c]
            w = max(v, 0.0)
            area[k] += 1
            stats[k, 0] += v
            stats[k, 1] += w
            stats[k, 2] += w * r
            stats[k, 3] += w * c
            stats[k, 4] += r
            stats[k, 5] += c
            peak[k] = max(peak[k], v)
            box[k, 0] = min(box[k, 0], r)
            box[k, 1] = max(box[k, 1], r)
            box[k, 2] = min(box[k, 2], c)
            box[k, 3] = max(box[k, 3], c)
    return area, stats, peak, box


def spot_table(labels: np.ndarray, intensity: np.ndarray) -> pd.DataFrame:
    """Per-spot properties of a label image.

    Parameters
    ----------
    labels : (rows, cols) int array
        Spot labels, 0 = background. Labels need not be consecutive.
    intensity : (rows, cols) array
        Image the intensities are measured on (for the routine: the median-subtracted
        frame, i.e. counts above the local background).

    Returns
    -------
    pandas.DataFrame
        One row per label present, columns :data:`SPOT_TABLE_COLUMNS`. The centroid is
        weighted by the intensity clipped at 0 (the geometric centroid where that sum is 0);
        ``row_start:row_stop, col_start:col_stop`` is the bounding box as slices.
    """
    labels = np.asarray(labels)
    intensity = np.asarray(intensity, dtype=np.float64)
    if labels.ndim != 2 or labels.shape != intensity.shape:
        raise ValueError(
            f"labels {labels.shape} and intensity {intensity.shape} must be 2-D of one shape")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer image, got {labels.dtype}")
    top = int(labels.max(initial=0))
    if top > labels.size:  # sparse label values: compact them first
        ids, inverse = np.unique(labels, return_inverse=True)
        if ids[0] != 0:  # make room for the background at index 0
            ids, inverse = np.concatenate([[0], ids]), inverse + 1
        compact = inverse.reshape(labels.shape).astype(np.int64)
        area, stats, peak, box = _label_stats(compact, intensity, ids.size - 1)
        ids_of = ids
    else:
        area, stats, peak, box = _label_stats(labels.astype(np.int64, copy=False), intensity,
                                              top)
        ids_of = np.arange(top + 1)
    present = np.flatnonzero(area > 0)
    area, stats, peak, box = area[present], stats[present], peak[present], box[present]
    weighted = stats[:, 1] > 0
    safe_w = np.where(weighted, stats[:, 1], 1.0)
    return pd.DataFrame({
        "label": ids_of[present].astype(np.int64),
        "centroid_row": np.where(weighted, stats[:, 2] / safe_w, stats[:, 4] / area),
        "centroid_col": np.where(weighted, stats[:, 3] / safe_w, stats[:, 5] / area),
        "area": area,
        "integrated_intensity": stats[:, 0],
        "peak_intensity": peak,
        "row_start": box[:, 0], "row_stop": box[:, 1] + 1,
        "col_start": box[:, 2], "col_stop": box[:, 3] + 1,
    })
