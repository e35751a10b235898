"""Pairing of reference and reconstructed grains by overlap and misorientation; the Table 2
classes (one-to-one, one-to-multi, false negative, false positive).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from labdct_live.grains.compare.registration import _label_stats, _misorientation_deg, _overlaps
from labdct_live.grains.grainmap import GrainMap
from labdct_live.grains.phase import GrainMapError

__all__ = [
    "CLASS_FALSE_NEGATIVE",
    "CLASS_FALSE_POSITIVE",
    "CLASS_ONE_TO_MULTI",
    "CLASS_ONE_TO_ONE",
    "pair_grains",
]


#: Value of the ``class`` column for a reference grain with one reconstructed partner.
CLASS_ONE_TO_ONE = "one-to-one"

#: ... for a reference grain with several reconstructed partners.
CLASS_ONE_TO_MULTI = "one-to-multi"

#: ... for a reference grain without partner.
CLASS_FALSE_NEGATIVE = "false negative"

#: ... for a reconstructed grain without partner.
CLASS_FALSE_POSITIVE = "false positive"


def pair_grains(
    reference: GrainMap,
    rec_ids: np.ndarray,
    rec_orientations: np.ndarray,
    *,
    threshold_deg: float = 1.0,
    max_distance_mm: float | None = None,
    require_overlap: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pair reference grains with reconstructed grains on the reference grid.

    Parameters
    ----------
    reference : GrainMap
        The reference map.
    rec_ids : ndarray of int, shape ``reference.shape``
        Reconstructed grain ids resampled onto the reference grid.
    rec_orientations : ndarray (>= max(rec_ids) + 1, 3, 3)
        Reconstructed orientation matrices in the reference frame, indexed by grain id.
    threshold_deg : float
        Largest cubic misorientation of a pair (degrees).
    max_distance_mm : float, optional
        Largest centroid distance of a pair (mm).
    require_overlap : bool
        Only grains that share at least one voxel are candidates.

    Returns
    -------
    reference_grains, reconstructed_grains : DataFrame
        One row per grain (index: grain id) with ``esd_mm``, ``centroid_{z,y,x}_mm``,
        ``class``, ``partners`` / ``paired_reference``, ``misorientation_deg``.
    """
    if threshold_deg <= 0:
        raise GrainMapError(f"threshold_deg={threshold_deg} must be positive")
    if max_distance_mm is not None and max_distance_mm <= 0:
        raise GrainMapError(f"max_distance_mm={max_distance_mm} must be positive")
    n_ref = len(reference.orientations)
    n_rec = max(int(rec_ids.max(initial=0)) + 1, 1)
    spacing, origin = reference.spacing, reference.origin
    ref_counts, ref_centroids = _label_stats(reference.grain_ids, n_ref, spacing, origin)
    rec_counts, rec_centroids = _label_stats(rec_ids, n_rec, spacing, origin)
    ref_present = np.flatnonzero(ref_counts[1:]) + 1
    rec_present = np.flatnonzero(rec_counts[1:]) + 1
    voxel_volume = reference.voxel_volume

    if require_overlap:
        cand = _overlaps(reference.grain_ids, rec_ids)
    else:
        rr, cc = np.meshgrid(ref_present, rec_present, indexing="ij")
        cand = pd.DataFrame({"reference": rr.ravel(), "reconstructed": cc.ravel()})
        cand = cand.merge(_overlaps(reference.grain_ids, rec_ids), how="left",
                          on=["reference", "reconstructed"]).fillna({"overlap": 0})
    cand["misorientation_deg"] = np.nan
    for phase_id, phase in reference.phases.items():
        sel = (reference.phase_ids[cand["reference"].to_numpy()] == phase_id)
        if sel.any():
            cand.loc[sel, "misorientation_deg"] = _misorientation_deg(
                reference.orientations[cand.loc[sel, "reference"].to_numpy()],
                rec_orientations[cand.loc[sel, "reconstructed"].to_numpy()],
                phase.point_group,
            )
    cand["distance_mm"] = np.linalg.norm(
        ref_centroids[cand["reference"].to_numpy()]
        - rec_centroids[cand["reconstructed"].to_numpy()], axis=1)
    accepted = cand[cand["misorientation_deg"] < threshold_deg]
    if max_distance_mm is not None:
        accepted = accepted[accepted["distance_mm"] <= max_distance_mm]
    # Each reconstructed grain keeps its best reference partner.
    accepted = accepted.sort_values(["reconstructed", "overlap", "misorientation_deg"],
                                    ascending=[True, False, True])
    accepted = accepted.drop_duplicates("reconstructed", keep="first")

    esd = lambda counts: np.cbrt(6.0 * counts * voxel_volume / np.pi)  # noqa: E731
    partners = accepted.groupby("reference")["reconstructed"].apply(lambda s: tuple(sorted(s)))
    ref_table = pd.DataFrame(index=pd.Index(ref_present, name="grain_id"))
    ref_table["n_voxels"] = ref_counts[ref_present].astype(np.int64)
    ref_table["esd_mm"] = esd(ref_counts[ref_present])
    for axis, name in enumerate("zyx"):
        ref_table[f"centroid_{name}_mm"] = ref_centroids[ref_present, axis]
    ref_table["partners"] = [partners.get(g, ()) for g in ref_present]
    ref_table["n_partners"] = ref_table["partners"].map(len)
    ref_table["class"] = np.select(
        [ref_table["n_partners"] == 0, ref_table["n_partners"] == 1],
        [CLASS_FALSE_NEGATIVE, CLASS_ONE_TO_ONE], CLASS_ONE_TO_MULTI)
    best_mis = accepted.groupby("reference")["misorientation_deg"].min()
    ref_table["misorientation_deg"] = best_mis.reindex(ref_present).to_numpy()

    by_rec = accepted.set_index("reconstructed")
    rec_table = pd.DataFrame(index=pd.Index(rec_present, name="grain_id"))
    rec_table["n_voxels"] = rec_counts[rec_present].astype(np.int64)
    rec_table["esd_mm"] = esd(rec_counts[rec_present])
    for axis, name in enumerate("zyx"):
        rec_table[f"centroid_{name}_mm"] = rec_centroids[rec_present, axis]
    rec_table["paired_reference"] = (
        by_rec["reference"].reindex(rec_present).fillna(0).astype(np.int64).to_numpy())
    rec_table["misorientation_deg"] = by_rec["misorientation_deg"].reindex(rec_present).to_numpy()
    ref_class = ref_table["class"]
    rec_table["class"] = [
        CLASS_FALSE_POSITIVE if r == 0 else ref_class[r] for r in rec_table["paired_reference"]
    ]
    return ref_table, rec_table
