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
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial.transform import Rotation

from labdct_live.grainmap import GrainMap, GrainMapError

__all__ = [
    "CLASS_FALSE_NEGATIVE",
    "CLASS_FALSE_POSITIVE",
    "CLASS_ONE_TO_MULTI",
    "CLASS_ONE_TO_ONE",
    "Comparison",
    "EmptyGrainMapError",
    "NonCubicPhaseError",
    "Registration",
    "VoxelSizeMismatchError",
    "boundary_mask",
    "compare_grainmaps",
    "delta_gb",
    "delta_gb_ratio",
    "deviation_map",
    "pair_grains",
    "register",
    "resample_onto",
    "table2",
    "write_report",
]

logger = logging.getLogger(__name__)

#: Value of the ``class`` column for a reference grain with one reconstructed partner.
CLASS_ONE_TO_ONE = "one-to-one"
#: ... for a reference grain with several reconstructed partners.
CLASS_ONE_TO_MULTI = "one-to-multi"
#: ... for a reference grain without partner.
CLASS_FALSE_NEGATIVE = "false negative"
#: ... for a reconstructed grain without partner.
CLASS_FALSE_POSITIVE = "false positive"

_FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


class VoxelSizeMismatchError(GrainMapError):
    """The two maps have different voxel sizes and resampling was not asked for."""


class EmptyGrainMapError(GrainMapError):
    """A grain map without any grain."""


class NonCubicPhaseError(GrainMapError):
    """A phase that is not cubic: the comparison uses cubic misorientations."""


# --------------------------------------------------------------------------- checks


def _check_comparable(reference: GrainMap, reconstruction: GrainMap, resample: bool) -> None:
    for label, gm in (("reference", reference), ("reconstruction", reconstruction)):
        if gm.n_grains == 0:
            raise EmptyGrainMapError(f"the {label} grain map has no grain (all grain ids are 0)")
        present_phases = np.unique(gm.phase_ids[gm.grain_list]).tolist()
        non_cubic = [gm.phases[p] for p in present_phases if not gm.phases[p].is_cubic]
        if non_cubic:
            names = ", ".join(f"{p.name} (space group {p.space_group})" for p in non_cubic)
            raise NonCubicPhaseError(
                f"the {label} grain map has non-cubic phase(s) {names}; the comparison pairs "
                "grains by cubic misorientation and supports cubic phases (space groups 195-230)"
            )
    if not resample and not np.allclose(reference.spacing, reconstruction.spacing,
                                        rtol=1e-6, atol=0):
        raise VoxelSizeMismatchError(
            f"voxel sizes differ: reference {reference.spacing} mm, reconstruction "
            f"{reconstruction.spacing} mm (z, y, x); pass resample=True (CLI: --resample) "
            "to resample the reconstruction onto the reference grid"
        )


# --------------------------------------------------------------------------- geometry


def _xyz_rotation_in_zyx(rotation_xyz: np.ndarray) -> np.ndarray:
    """The matrix of a rotation given in (x, y, z) coordinates, for (z, y, x) coordinates."""
    return np.asarray(rotation_xyz)[::-1, ::-1]


@dataclass(frozen=True)
class Registration:
    """Rigid transform between a reference and a reconstruction.

    A point at ``p`` (sample x, y, z) in the reference frame is at ``rotation @ p + t`` in the
    reconstruction's frame, where ``t`` is ``translation_mm`` reversed: ``translation_mm`` is
    ordered (z, y, x) like every length triple of :class:`~labdct_live.grainmap.GrainMap`.

    Attributes
    ----------
    translation_mm : ndarray (3,)
        Translation in mm, (z, y, x).
    rotation : ndarray (3, 3)
        Rotation in sample (x, y, z) coordinates, the frame of the orientation matrices.
    n_pairs : int
        First-pass pairs the rotation was fitted on (0 when no rotation was fitted).
    """

    translation_mm: np.ndarray = field(default_factory=lambda: np.zeros(3))
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    n_pairs: int = 0

    @property
    def rotation_angle_deg(self) -> float:
        """Angle of the global rotation in degrees."""
        return float(np.degrees(Rotation.from_matrix(self.rotation).magnitude()))

    def orientations_to_reference(self, orientations: np.ndarray) -> np.ndarray:
        """Reconstructed orientation matrices ``U`` expressed in the reference frame."""
        return np.einsum("ji,njk->nik", self.rotation, orientations)


def _voxel_to_voxel_affine(
    target: GrainMap, moving: GrainMap, registration: Registration
) -> tuple[np.ndarray, np.ndarray]:
    """Matrix and offset mapping a target voxel index onto a moving voxel index (z, y, x)."""
    rot = _xyz_rotation_in_zyx(registration.rotation)
    sp_t = np.asarray(target.spacing)
    sp_m = np.asarray(moving.spacing)
    matrix = (rot * sp_t[None, :]) / sp_m[:, None]
    offset = (rot @ target.origin + registration.translation_mm - moving.origin) / sp_m
    return matrix, offset


def resample_onto(
    reference: GrainMap, moving: GrainMap, registration: Registration | None = None
) -> np.ndarray:
    """Grain ids of ``moving`` on the voxel grid of ``reference`` (nearest neighbour).

    Parameters
    ----------
    reference : GrainMap
        Defines the target grid (shape, spacing, centre).
    moving : GrainMap
        The map to resample.
    registration : Registration, optional
        Transform from the reference frame into the moving map's frame (default: identity,
        i.e. the two ``center`` values place the maps).

    Returns
    -------
    ndarray of int32, shape ``reference.shape``
        0 where the moving map has no grain or no data.
    """
    registration = registration or Registration()
    matrix, offset = _voxel_to_voxel_affine(reference, moving, registration)
    shift = np.round(offset)
    if np.allclose(matrix, np.eye(3), atol=1e-9) and np.allclose(offset, shift, atol=1e-6):
        return _shifted_copy(moving.grain_ids, shift.astype(int), reference.shape)
    return ndimage.affine_transform(
        moving.grain_ids, matrix, offset=offset, output_shape=reference.shape, order=0,
        mode="constant", cval=0,
    )


def _shifted_copy(source: np.ndarray, shift: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``out[k] = source[k + shift]`` where defined, 0 elsewhere (exact integer shift)."""
    out = np.zeros(shape, dtype=source.dtype)
    dst, src = [], []
    for n_out, n_src, s in zip(shape, source.shape, shift):
        lo = max(0, -s)
        hi = min(n_out, n_src - s)
        if hi <= lo:
            return out
        dst.append(slice(lo, hi))
        src.append(slice(lo + s, hi + s))
    out[tuple(dst)] = source[tuple(src)]
    return out


def boundary_mask(grain_ids: np.ndarray) -> np.ndarray:
    """Voxels of a grain that have a face neighbour with another id (incl. 0).

    The edge of the volume is not a boundary.

    Parameters
    ----------
    grain_ids : ndarray of int, shape (Z, Y, X)

    Returns
    -------
    ndarray of bool
    """
    ids = np.asarray(grain_ids)
    out = np.zeros(ids.shape, dtype=bool)
    for axis in range(ids.ndim):
        lo = [slice(None)] * ids.ndim
        hi = [slice(None)] * ids.ndim
        lo[axis] = slice(None, -1)
        hi[axis] = slice(1, None)
        differs = ids[tuple(lo)] != ids[tuple(hi)]
        out[tuple(lo)] |= differs
        out[tuple(hi)] |= differs
    out &= ids > 0
    return out


def _cross_correlation_shift(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Integer shift ``s`` (z, y, x) maximising ``sum_k fixed[k] moving[k + s]`` (circular)."""
    from scipy import fft

    spectrum = np.conj(fft.rfftn(fixed.astype(np.float32), workers=-1))
    spectrum *= fft.rfftn(moving.astype(np.float32), workers=-1)
    corr = fft.irfftn(spectrum, s=fixed.shape, workers=-1)
    del spectrum
    peak = np.array(np.unravel_index(int(np.argmax(corr)), corr.shape))
    shape = np.array(corr.shape)
    return np.where(peak > shape // 2, peak - shape, peak)


def _label_stats(ids: np.ndarray, n_labels: int, spacing, origin) -> tuple[np.ndarray, np.ndarray]:
    """Voxel counts and centroids (mm, z, y, x; NaN when absent) per label 0..n_labels-1."""
    counts = np.zeros(n_labels)
    sums = np.zeros((n_labels, 3))
    ny, nx = ids.shape[1:]
    yy = np.repeat(np.arange(ny, dtype=float), nx)
    xx = np.tile(np.arange(nx, dtype=float), ny)
    for z in range(ids.shape[0]):  # one slice at a time: no index volumes in memory
        flat = ids[z].ravel()
        c = np.bincount(flat, minlength=n_labels)[:n_labels]
        counts += c
        sums[:, 0] += z * c
        sums[:, 1] += np.bincount(flat, weights=yy, minlength=n_labels)[:n_labels]
        sums[:, 2] += np.bincount(flat, weights=xx, minlength=n_labels)[:n_labels]
    with np.errstate(invalid="ignore", divide="ignore"):
        centroid_idx = sums / counts[:, None]
    return counts, np.asarray(origin) + centroid_idx * np.asarray(spacing)


def _overlaps(ref_ids: np.ndarray, rec_ids: np.ndarray) -> pd.DataFrame:
    """Voxel overlap of every (reference, reconstructed) grain pair that shares a voxel."""
    n_rec = int(rec_ids.max(initial=0)) + 1
    n_ref = int(ref_ids.max(initial=0)) + 1
    both = (ref_ids > 0) & (rec_ids > 0)
    keys = ref_ids[both].astype(np.int64) * n_rec + rec_ids[both]
    if n_ref * n_rec <= 50_000_000:
        counts = np.bincount(keys, minlength=n_ref * n_rec)
        uniq = np.flatnonzero(counts)
        counts = counts[uniq]
    else:
        uniq, counts = np.unique(keys, return_counts=True)
    return pd.DataFrame({"reference": uniq // n_rec, "reconstructed": uniq % n_rec,
                         "overlap": counts})


def _misorientation_deg(u_ref: np.ndarray, u_rec: np.ndarray, symmetry) -> np.ndarray:
    """Disorientation angles (degrees) of matched rows of orientation matrices ``U``."""
    from orix.quaternion import Orientation

    if len(u_ref) == 0:
        return np.zeros(0)
    a = Orientation.from_matrix(np.swapaxes(u_ref, -1, -2), symmetry=symmetry)
    b = Orientation.from_matrix(np.swapaxes(u_rec, -1, -2), symmetry=symmetry)
    return np.asarray(a.angle_with(b, degrees=True), dtype=float)


def _first_pass_pairs(overlaps: pd.DataFrame, ref_counts, rec_counts, min_fraction: float):
    """Mutually best-overlapping pairs covering > min_fraction of the smaller grain."""
    o = overlaps
    best_for_rec = o.loc[o.groupby("reconstructed")["overlap"].idxmax()]
    best_for_ref = o.loc[o.groupby("reference")["overlap"].idxmax()]
    mutual = best_for_rec.merge(best_for_ref, on=["reference", "reconstructed", "overlap"])
    smaller = np.minimum(ref_counts[mutual["reference"]], rec_counts[mutual["reconstructed"]])
    return mutual[mutual["overlap"] > min_fraction * smaller]


def _fit_rotation(u_ref: np.ndarray, u_rec: np.ndarray, symmetry) -> np.ndarray:
    """Global rotation ``R`` with ``U_rec ≈ R U_ref S`` (S a crystal symmetry), robust mean."""
    ops = symmetry.to_matrix()  # passive symmetry operators; as crystal-side ops use S^T
    # Candidates R = U_rec S U_ref^T for every S; keep per pair the smallest rotation.
    cand = np.einsum("nij,sjk,nlk->nsil", u_rec, np.swapaxes(ops, -1, -2), u_ref)
    angles = Rotation.from_matrix(cand.reshape(-1, 3, 3)).magnitude().reshape(cand.shape[:2])
    best = cand[np.arange(len(cand)), np.argmin(angles, axis=1)]
    rotations = Rotation.from_matrix(best)
    mean = rotations.mean()
    # One robust re-estimate without pairs far from the first mean (mis-paired grains).
    spread = (rotations * mean.inv()).magnitude()
    keep = spread <= max(np.radians(0.5), 3 * np.median(spread))
    return rotations[keep].mean().as_matrix()


def register(
    reference: GrainMap,
    reconstruction: GrainMap,
    *,
    fit_rotation: bool = False,
    first_pass_overlap: float = 0.5,
) -> Registration:
    """Register a reconstruction onto a reference.

    Parameters
    ----------
    reference, reconstruction : GrainMap
        The two maps; the reconstruction is placed on the reference's grid by ``center``
        before the search.
    fit_rotation : bool
        Also fit a global rotation on first-pass pairs (and refine the translation from
        their centroids).
    first_pass_overlap : float
        First-pass pairs overlap mutually best and cover more than this fraction of the
        smaller grain.

    Returns
    -------
    Registration

    Notes
    -----
    The translation search is circular: shifts beyond half the volume are not found.
    """
    placed = resample_onto(reference, reconstruction)
    shift = _cross_correlation_shift(boundary_mask(reference.grain_ids), boundary_mask(placed))
    del placed
    registration = Registration(translation_mm=shift * np.asarray(reference.spacing))
    logger.info("translation from boundary cross-correlation: %s voxels", shift.tolist())
    if not fit_rotation:
        return registration
    rec_on_grid = resample_onto(reference, reconstruction, registration)
    n_ref = len(reference.orientations)
    n_rec = len(reconstruction.orientations)
    ref_counts, _ = _label_stats(reference.grain_ids, n_ref, reference.spacing, reference.origin)
    rec_counts, _ = _label_stats(rec_on_grid, n_rec, reference.spacing, reference.origin)
    pairs = _first_pass_pairs(_overlaps(reference.grain_ids, rec_on_grid), ref_counts,
                              rec_counts, first_pass_overlap)
    del rec_on_grid
    if len(pairs) < 3:
        raise GrainMapError(
            f"only {len(pairs)} first-pass pairs (mutual overlap > {first_pass_overlap:.0%}); "
            "cannot fit a rotation; register without fit_rotation or check the maps"
        )
    ref_ids = pairs["reference"].to_numpy()
    rec_ids = pairs["reconstructed"].to_numpy()
    symmetry = reference.phases[int(reference.phase_ids[ref_ids[0]])].point_group
    rotation = _fit_rotation(reference.orientations[ref_ids],
                             reconstruction.orientations[rec_ids], symmetry)
    # Translation from the centroids given the rotation: c_rec = R c_ref + t (x, y, z).
    _, ref_centroids = _label_stats(reference.grain_ids, n_ref, reference.spacing,
                                    reference.origin)
    _, rec_centroids = _label_stats(reconstruction.grain_ids, n_rec, reconstruction.spacing,
                                    reconstruction.origin)
    c_ref = ref_centroids[ref_ids][:, ::-1]
    c_rec = rec_centroids[rec_ids][:, ::-1]
    weights = ref_counts[ref_ids]
    t_xyz = np.average(c_rec - c_ref @ rotation.T, axis=0, weights=weights)
    result = Registration(translation_mm=t_xyz[::-1], rotation=rotation, n_pairs=len(pairs))
    logger.info("rotation %.3f° fitted on %d first-pass pairs; translation %s mm",
                result.rotation_angle_deg, len(pairs), np.round(result.translation_mm, 6))
    return result


# --------------------------------------------------------------------------- pairing


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


# --------------------------------------------------------------------------- δ_GB


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


# --------------------------------------------------------------------------- the whole comparison


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


# --------------------------------------------------------------------------- report


def table2(comparisons: Sequence[Comparison]) -> pd.DataFrame:
    """The paper's Table 2: one row per reconstruction (sizes in µm)."""
    rows = []
    for comp in comparisons:
        c = comp.counts()
        ref = comp.reference_grains
        esd_um = ref["esd_mm"] * 1e3
        fn = ref["class"] == CLASS_FALSE_NEGATIVE
        paired = ref["n_partners"] > 0
        dgb_um = ref.loc[paired, "delta_gb_mm"] * 1e3
        rows.append({
            "Reconstruction": comp.label,
            "Reference grains": c["reference"],
            "Reference ESD (µm)": f"{esd_um.mean():.1f} ± {esd_um.std(ddof=0):.1f}",
            "Indexed grains": c["indexed"],
            "One-to-one": c["one_to_one"],
            "One-to-multi (partners)": f"{c['one_to_multi']} ({c['one_to_multi_partners']})",
            "False negatives": c["false_negative"],
            "False-negative ESD (µm)": (f"{esd_um[fn].mean():.1f} ± {esd_um[fn].std(ddof=0):.1f}"
                                        if fn.any() else "–"),
            "False positives": c["false_positive"],
            "δ_GB (µm)": (f"{dgb_um.mean():.2f} ± {dgb_um.std(ddof=0):.2f}"
                          if dgb_um.notna().any() else "–"),
        })
    return pd.DataFrame(rows)


def _markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _plot_sizes(comparisons: Sequence[Comparison], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = comparisons[0].reference_grains
    bins = np.linspace(0, ref["esd_mm"].max() * 1e3 * 1.05, 25)
    fig, axes = plt.subplots(1, len(comparisons), figsize=(5.5 * len(comparisons), 4),
                             squeeze=False)
    for ax, comp in zip(axes[0], comparisons):
        r = comp.reference_grains
        ax.hist(r["esd_mm"] * 1e3, bins, histtype="step", lw=2, label="reference", color="k")
        ax.hist(comp.reconstructed_grains["esd_mm"] * 1e3, bins, histtype="step", lw=1.5,
                label=f"{comp.label} (indexed)")
        ax.hist(r.loc[r["class"] == CLASS_FALSE_NEGATIVE, "esd_mm"] * 1e3, bins, alpha=0.5,
                label="false negatives")
        fp = comp.reconstructed_grains
        ax.hist(fp.loc[fp["class"] == CLASS_FALSE_POSITIVE, "esd_mm"] * 1e3, bins, alpha=0.5,
                label="false positives")
        ax.set_xlabel("equivalent spherical diameter (µm)")
        ax.set_ylabel("grains")
        ax.set_title(comp.label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_scatter(x, ys: Mapping[str, np.ndarray], xlabel: str, ylabel: str, path: Path,
                  hline: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, y in ys.items():
        ax.scatter(x[label] if isinstance(x, Mapping) else x, y, s=10, alpha=0.7, label=label)
    if hline is not None:
        ax.axhline(hline, color="k", lw=1, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(ys) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_deviation(dev: pd.DataFrame, grain_id: int, label: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot(projection="3d")
    pts = ax.scatter(dev["x_mm"] * 1e3, dev["y_mm"] * 1e3, dev["z_mm"] * 1e3,
                     c=dev["distance_mm"] * 1e3, s=4, cmap="viridis")
    fig.colorbar(pts, ax=ax, shrink=0.7, label="distance to partner boundary (µm)")
    ranges = [np.ptp(dev[c]) + 1e-9 for c in ("x_mm", "y_mm", "z_mm")]
    ax.set_box_aspect(ranges)  # true proportions of the grain
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    ax.set_zlabel("z (µm)")
    ax.set_title(f"{label}: grain {grain_id}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _default_deviation_grains(comparisons: Sequence[Comparison], n: int = 3) -> list[int]:
    """The n largest reference grains paired in every comparison."""
    ref = comparisons[0].reference_grains
    paired = np.logical_and.reduce([c.reference_grains["n_partners"] > 0 for c in comparisons])
    return ref[paired].sort_values("esd_mm", ascending=False).index[:n].tolist()


def write_report(
    comparisons: Sequence[Comparison],
    out_dir: str | os.PathLike,
    *,
    deviation_grains: Sequence[int] | None = None,
    sources: Mapping[str, str] | None = None,
) -> Path:
    """Write the comparison report: markdown, CSV tables and PNG plots.

    ``report.md`` is written last (under a temporary name, then renamed): its presence means
    the report is complete.

    Parameters
    ----------
    comparisons : sequence of 1 or 2 Comparison
        Against the same reference; with two, the δ_GB ratio first/second is reported.
    out_dir : path-like
        Output directory (created).
    deviation_grains : sequence of int, optional
        Reference grains for deviation maps (default: the 3 largest paired in all).
    sources : dict, optional
        {"reference": path, label: path, ...} listed in the report.

    Returns
    -------
    Path
        ``out_dir / "report.md"``.
    """
    if not 1 <= len(comparisons) <= 2:
        raise GrainMapError(f"write_report takes 1 or 2 comparisons, got {len(comparisons)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / "report.md"
    final.unlink(missing_ok=True)  # an old report must not vouch for new files
    lines = ["# Grain-map comparison", ""]
    if sources:
        lines += ["Files:", ""] + [f"- {k}: `{v}`" for k, v in sources.items()] + [""]
    first = comparisons[0]
    lines += [
        f"Pairing: cubic misorientation < {first.threshold_deg:g}°"
        + (f", centroid distance ≤ {first.max_distance_mm * 1e3:g} µm"
           if first.max_distance_mm else "")
        + ". Sizes are equivalent spherical diameters (ESD); δ_GB is the mean distance from "
          "the reference grain's boundary voxels to the nearest boundary voxel of its partner "
          "(Eq. 4).", "",
        "## Grain counts (Table 2)", "", _markdown_table(table2(comparisons)), "",
        "## Registration", "",
        "| Reconstruction | translation z, y, x (µm) | rotation (°) | first-pass pairs |",
        "|---|---|---|---|",
    ]
    for comp in comparisons:
        reg = comp.registration
        t = ", ".join(f"{v * 1e3:.2f}" for v in reg.translation_mm)
        lines.append(f"| {comp.label} | {t} | {reg.rotation_angle_deg:.3f} | {reg.n_pairs} |")
    lines += ["", "## Plots", "", "![size distributions](size_distributions.png)", ""]
    for k, comp in enumerate(comparisons):
        stem = f"reconstruction{k + 1}"
        comp.reference_grains.assign(
            partners=comp.reference_grains["partners"].map(lambda p: " ".join(map(str, p)))
        ).to_csv(out / f"{stem}_reference_grains.csv")
        comp.reconstructed_grains.to_csv(out / f"{stem}_reconstructed_grains.csv")
    _plot_sizes(comparisons, out / "size_distributions.png")
    paired = {c.label: c.reference_grains[c.reference_grains["n_partners"] > 0]
              for c in comparisons}
    _plot_scatter({k: v["esd_mm"] * 1e3 for k, v in paired.items()},
                  {k: v["delta_gb_mm"] * 1e3 for k, v in paired.items()},
                  "reference grain ESD (µm)", "δ_GB (µm)", out / "delta_gb_vs_size.png")
    lines += ["![δ_GB vs size](delta_gb_vs_size.png)", ""]
    if len(comparisons) == 2:
        ratio, stats = delta_gb_ratio(*comparisons)
        ratio.to_csv(out / "delta_gb_ratio.csv")
        _plot_scatter(ratio["esd_mm"].to_numpy() * 1e3, {"ratio": ratio["ratio"].to_numpy()},
                      "reference grain ESD (µm)",
                      f"δ_GB({comparisons[0].label}) / δ_GB({comparisons[1].label})",
                      out / "ratio_vs_size.png", hline=1.0)
        lines += [
            "## δ_GB ratio (Fig. 7)", "",
            f"δ_GB({comparisons[0].label}) / δ_GB({comparisons[1].label}) over "
            f"{stats['n_common']} commonly indexed grains: mean {stats['mean']:.3f}, "
            f"SD {stats['sd']:.3f}, max {stats['max']:.3f}, "
            f"> 1 for {stats['fraction_above_1']:.0%} of the grains"
            + (f" ({stats['n_infinite']} infinite ratios left out)"
               if stats["n_infinite"] else "") + ".", "",
            "![ratio vs size](ratio_vs_size.png)", "",
        ]
    grains = (list(deviation_grains) if deviation_grains is not None
              else _default_deviation_grains(comparisons))
    if grains:
        lines += ["## Deviation maps (Fig. 8)", ""]
    for grain_id in grains:
        for k, comp in enumerate(comparisons):
            try:
                dev = deviation_map(comp, int(grain_id))
            except GrainMapError as exc:
                lines += [f"- grain {grain_id}, {comp.label}: {exc}"]
                continue
            name = f"deviation_grain{grain_id}_reconstruction{k + 1}.png"
            _plot_deviation(dev, int(grain_id), comp.label, out / name)
            lines += [f"![grain {grain_id}, {comp.label}]({name})"]
        lines.append("")
    tmp = out / ".report.md.partial"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.move(tmp, final)
    logger.info("wrote %s", final)
    return final
