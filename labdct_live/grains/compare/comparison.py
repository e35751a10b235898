"""Compare a reconstructed grain map with a reference map, as the seed paper does.

Steps (docs/physics.md §10-§11; the paper's Table 2 and Figs. 7-8):

1. **Common grid.** The reconstruction is resampled (nearest neighbour) onto the reference's
   voxel grid. Both files place their volumes in one sample frame through ``center``;
   different voxel sizes are an error unless ``resample=True``.
2. **Registration** (:func:`register`). A translation from the cross-correlation of the two
   grain-boundary maps (integer voxels, exact for maps that differ by a shift); optionally a
   global rotation fitted on first-pass pairs (grains that overlap mutually by more than half),
   from their orientations, followed by the translation that best maps their centroids.
   Convention: a point ``p`` of the reference frame is at ``R p + t`` in the reconstruction's
   frame (``p`` in sample (x, y, z) coordinates); reconstructed orientations are brought into
   the reference frame as ``R^T U``.
3. **Pairing** (:func:`pair_grains`). Candidate pairs are grains that overlap on the common
   grid (or all pairs with ``require_overlap=False``); a pair is accepted when the cubic
   misorientation is below ``threshold_deg`` (default 1°) and, optionally, the centroid distance
   is below ``max_distance_mm``. A reconstructed grain keeps only its best reference partner
   (largest overlap, then smallest misorientation). Reference grains with one partner are
   *one-to-one*, with several *one-to-multi*, with none *false negatives*; reconstructed grains
   without partner are *false positives*. Sizes are equivalent spherical diameters.
4. **δ_GB** (Eq. 4, :func:`delta_gb`). For every boundary voxel of a reference grain (a voxel
   with a face neighbour outside the grain; the edge of the volume is not a boundary), the
   distance to the nearest boundary voxel of its partner (the union of its partners for
   one-to-multi), averaged per grain. Computed in each grain's bounding box with
   :func:`scipy.ndimage.distance_transform_edt`.
5. The δ_GB ratio of two reconstructions of one reference (:func:`delta_gb_ratio`, Fig. 7),
   deviation maps (:func:`deviation_map`, Fig. 8) and a report (:func:`write_report`).

Lengths are mm in the API and in the CSV files; the report shows µm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from labdct_live.grains.compare.boundaries import delta_gb
from labdct_live.grains.compare.pairing import (
    CLASS_FALSE_NEGATIVE,
    CLASS_FALSE_POSITIVE,
    CLASS_ONE_TO_MULTI,
    CLASS_ONE_TO_ONE,
    pair_grains,
)
from labdct_live.grains.compare.registration import (
    EmptyGrainMapError,
    Registration,
    _check_comparable,
    register,
    resample_onto,
)
from labdct_live.grains.grainmap import GrainMap
from labdct_live.grains.phase import GrainMapError

__all__ = [
    "Comparison",
    "compare_grainmaps",
    "delta_gb_ratio",
]

logger = logging.getLogger(__name__)


@dataclass
class Comparison:
    """Result of :func:`compare_grainmaps`.

    Attributes
    ----------
    reference : GrainMap
    rec_ids : ndarray
        Reconstructed grain ids on the reference grid, after registration.
    registration : Registration
    reference_grains, reconstructed_grains : DataFrame
        Per-grain tables (see :func:`pair_grains`); ``reference_grains`` also has
        ``delta_gb_mm``.
    threshold_deg, max_distance_mm : float
        The pairing criteria.
    label : str
        Name of the reconstruction in reports.
    """

    reference: GrainMap
    rec_ids: np.ndarray
    registration: Registration
    reference_grains: pd.DataFrame
    reconstructed_grains: pd.DataFrame
    threshold_deg: float
    max_distance_mm: float | None
    label: str = "reconstruction"

    def counts(self) -> dict[str, int]:
        """Grain counts of the paper's Table 2."""
        ref_class = self.reference_grains["class"]
        rec_class = self.reconstructed_grains["class"]
        return {
            "reference": int(len(ref_class)),
            "indexed": int(len(rec_class)),
            "one_to_one": int((ref_class == CLASS_ONE_TO_ONE).sum()),
            "one_to_multi": int((ref_class == CLASS_ONE_TO_MULTI).sum()),
            "one_to_multi_partners": int((rec_class == CLASS_ONE_TO_MULTI).sum()),
            "false_negative": int((ref_class == CLASS_FALSE_NEGATIVE).sum()),
            "false_positive": int((rec_class == CLASS_FALSE_POSITIVE).sum()),
        }

    @property
    def partners(self) -> dict[int, tuple[int, ...]]:
        """{reference grain id: partners} of paired reference grains."""
        p = self.reference_grains["partners"]
        return {int(g): tuple(v) for g, v in p.items() if v}


def compare_grainmaps(
    reference: GrainMap,
    reconstruction: GrainMap,
    *,
    threshold_deg: float = 1.0,
    max_distance_mm: float | None = None,
    require_overlap: bool = True,
    register_maps: bool = True,
    fit_rotation: bool = False,
    resample: bool = False,
    registration: Registration | None = None,
    label: str = "reconstruction",
    progress: bool = False,
) -> Comparison:
    """Register, pair and measure a reconstructed grain map against a reference.

    Parameters
    ----------
    reference, reconstruction : GrainMap
        Cubic grain maps; the reconstruction is resampled onto the reference grid.
    threshold_deg : float
        Pairing threshold on the cubic misorientation (degrees), default 1.
    max_distance_mm : float, optional
        Pairing limit on the centroid distance (mm).
    require_overlap : bool
        Only grains sharing a voxel are paired (default). False pairs by misorientation
        (and distance) alone.
    register_maps : bool
        Search the translation (:func:`register`); False trusts the files' centres.
    fit_rotation : bool
        Also fit a global rotation.
    resample : bool
        Allow different voxel sizes (the reconstruction is resampled).
    registration : Registration, optional
        Use this transform instead of searching one.
    label : str
        Name of the reconstruction in reports.
    progress : bool
        Show progress bars.

    Returns
    -------
    Comparison

    Raises
    ------
    EmptyGrainMapError, NonCubicPhaseError, VoxelSizeMismatchError
        On maps that cannot be compared.
    """
    _check_comparable(reference, reconstruction, resample)
    if registration is None:
        registration = (register(reference, reconstruction, fit_rotation=fit_rotation)
                        if register_maps else Registration())
    rec_ids = resample_onto(reference, reconstruction, registration)
    if not rec_ids.any():
        raise EmptyGrainMapError(
            "after registration the reconstruction does not overlap the reference grid"
        )
    rec_orientations = registration.orientations_to_reference(reconstruction.orientations)
    ref_table, rec_table = pair_grains(
        reference, rec_ids, rec_orientations, threshold_deg=threshold_deg,
        max_distance_mm=max_distance_mm, require_overlap=require_overlap)
    partners = {g: p for g, p in ref_table["partners"].items() if p}
    ref_table["delta_gb_mm"] = delta_gb(reference, rec_ids, partners,
                                        progress=progress).reindex(ref_table.index)
    result = Comparison(reference, rec_ids, registration, ref_table, rec_table, threshold_deg,
                        max_distance_mm, label)
    logger.info("%s: %s", label, result.counts())
    return result


def delta_gb_ratio(first: Comparison, second: Comparison) -> tuple[pd.DataFrame, dict]:
    """δ_GB(first) / δ_GB(second) per reference grain paired in both (the paper's Fig. 7).

    With the standard routine as ``first`` and the U-Net as ``second``, a ratio > 1 means the
    U-Net map has the more accurate boundary.

    Returns
    -------
    table : DataFrame
        Index: reference grain id; columns ``esd_mm``, ``delta_first_mm``,
        ``delta_second_mm``, ``ratio`` (1 where both are 0, inf where only the second is 0).
    stats : dict
        ``n_common``, ``mean``, ``sd``, ``max``, ``fraction_above_1`` over finite ratios, and
        ``n_infinite``.
    """
    a, b = first.reference_grains, second.reference_grains
    if first.reference.shape != second.reference.shape or not a.index.equals(b.index):
        raise GrainMapError("the two comparisons do not share the same reference map")
    common = a.index[(a["n_partners"] > 0) & (b["n_partners"] > 0)]
    da = a.loc[common, "delta_gb_mm"].to_numpy()
    db = b.loc[common, "delta_gb_mm"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((da == 0) & (db == 0), 1.0, da / db)
    table = pd.DataFrame({"esd_mm": a.loc[common, "esd_mm"].to_numpy(), "delta_first_mm": da,
                          "delta_second_mm": db, "ratio": ratio}, index=common)
    finite = ratio[np.isfinite(ratio)]
    stats = {
        "n_common": int(len(common)),
        "mean": float(finite.mean()) if finite.size else float("nan"),
        "sd": float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
        "max": float(finite.max()) if finite.size else float("nan"),
        "fraction_above_1": float((finite > 1).mean()) if finite.size else float("nan"),
        "n_infinite": int(np.isinf(ratio).sum()),
    }
    return table, stats
