"""Grain-boundary deviation δ_GB: the distance from each reconstructed boundary voxel of a
paired grain to the reference grain's boundary.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import ndimage

from labdct_live.grains.grainmap import GrainMap
from labdct_live.grains.phase import GrainMapError

if TYPE_CHECKING:
    from labdct_live.grains.compare.comparison import Comparison

__all__ = [
    "delta_gb",
    "deviation_map",
]


_FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


def _grain_boxes(ids: np.ndarray) -> list[tuple[slice, ...] | None]:
    """Bounding boxes indexed by grain id (index 0 = grain 1, as scipy returns them)."""
    return ndimage.find_objects(ids)


def _box_of(mask: np.ndarray) -> tuple[slice, ...]:
    return ndimage.find_objects(mask.astype(np.int8))[0]


def _union_box(boxes: Iterable[tuple[slice, ...]], shape, margin: int = 1) -> tuple[slice, ...]:
    boxes = list(boxes)
    return tuple(
        slice(max(0, min(b[a].start for b in boxes) - margin),
              min(shape[a], max(b[a].stop for b in boxes) + margin))
        for a in range(len(shape))
    )


def _region_boundary(region: np.ndarray) -> np.ndarray:
    # border_value=1: the edge of the crop/volume does not make a boundary.
    return region & ~ndimage.binary_erosion(region, _FACE_NEIGHBOURS, border_value=1)


def _boundary_distances_in_box(
    ref_crop: np.ndarray, rec_crop: np.ndarray, grain_id: int, partners: Sequence[int], spacing
) -> tuple[np.ndarray, np.ndarray]:
    ref_boundary = _region_boundary(ref_crop == grain_id)
    rec_boundary = _region_boundary(np.isin(rec_crop, partners))
    if not rec_boundary.any() or not ref_boundary.any():
        return np.argwhere(ref_boundary), np.full(int(ref_boundary.sum()), np.nan)
    distance = ndimage.distance_transform_edt(~rec_boundary, sampling=spacing)
    return np.argwhere(ref_boundary), distance[ref_boundary]


def delta_gb(
    reference: GrainMap,
    rec_ids: np.ndarray,
    partners: Mapping[int, Sequence[int]],
    *,
    progress: bool = False,
) -> pd.Series:
    """Grain-boundary deviation δ_GB (Eq. 4) of paired reference grains, in mm.

    Parameters
    ----------
    reference : GrainMap
        The reference map.
    rec_ids : ndarray of int, shape ``reference.shape``
        Reconstructed grain ids on the reference grid.
    partners : dict {reference grain id: sequence of reconstructed grain ids}
        Pairs; a grain with several partners is compared with their union.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Series
        δ_GB in mm indexed by reference grain id (NaN where the partner has no boundary).
    """
    from tqdm.auto import tqdm

    if rec_ids.shape != reference.shape:
        raise GrainMapError(f"rec_ids has shape {rec_ids.shape}, reference {reference.shape}")
    ref_boxes = _grain_boxes(reference.grain_ids)
    rec_boxes = _grain_boxes(rec_ids)
    out = {}
    items = [(int(g), [int(p) for p in ps]) for g, ps in partners.items() if len(ps)]
    for grain_id, grain_partners in tqdm(items, desc="delta_GB", unit="grain",
                                         disable=not progress):
        boxes = [ref_boxes[grain_id - 1]] + [rec_boxes[p - 1] for p in grain_partners
                                             if p - 1 < len(rec_boxes) and rec_boxes[p - 1]]
        box = _union_box(boxes, reference.shape)
        _, dist = _boundary_distances_in_box(reference.grain_ids[box], rec_ids[box], grain_id,
                                             grain_partners, reference.spacing)
        out[grain_id] = float(dist.mean()) if dist.size else np.nan
    return pd.Series(out, name="delta_gb_mm", dtype=float).rename_axis("grain_id")


def deviation_map(comparison: Comparison, grain_id: int) -> pd.DataFrame:
    """Per boundary voxel of a reference grain: position (mm) and distance to the partner.

    The data of the paper's Fig. 8.

    Parameters
    ----------
    comparison : Comparison
        A comparison result.
    grain_id : int
        A paired reference grain.

    Returns
    -------
    DataFrame
        Columns ``z_mm, y_mm, x_mm, distance_mm``, one row per boundary voxel.
    """
    ref = comparison.reference
    if grain_id not in comparison.reference_grains.index:
        raise GrainMapError(f"grain_id={grain_id} is not a grain of the reference map")
    partners = comparison.reference_grains.at[grain_id, "partners"]
    if not partners:
        raise GrainMapError(f"reference grain {grain_id} has no partner (false negative)")
    box = _union_box([_box_of(ref.grain_ids == grain_id),
                      _box_of(np.isin(comparison.rec_ids, partners))], ref.shape)
    idx, dist = _boundary_distances_in_box(ref.grain_ids[box], comparison.rec_ids[box],
                                           grain_id, partners, ref.spacing)
    corner = np.array([s.start for s in box])
    pos = ref.origin + (idx + corner) * np.asarray(ref.spacing)
    return pd.DataFrame({"z_mm": pos[:, 0], "y_mm": pos[:, 1], "x_mm": pos[:, 2],
                         "distance_mm": dist})
