"""Registration of a reconstructed grain map onto a reference: the rigid transform from grain
centres and orientations, refined by cross-correlation, and resampling onto the reference grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial.transform import Rotation

from labdct_live.grains.grainmap import GrainMap
from labdct_live.grains.phase import GrainMapError

__all__ = [
    "EmptyGrainMapError",
    "NonCubicPhaseError",
    "Registration",
    "VoxelSizeMismatchError",
    "boundary_mask",
    "register",
    "resample_onto",
]

logger = logging.getLogger(__name__)


class VoxelSizeMismatchError(GrainMapError):
    """The two maps have different voxel sizes and resampling was not asked for."""


class EmptyGrainMapError(GrainMapError):
    """A grain map without any grain."""


class NonCubicPhaseError(GrainMapError):
    """A phase that is not cubic: the comparison uses cubic misorientations."""


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


def _xyz_rotation_in_zyx(rotation_xyz: np.ndarray) -> np.ndarray:
    """The matrix of a rotation given in (x, y, z) coordinates, for (z, y, x) coordinates."""
    return np.asarray(rotation_xyz)[::-1, ::-1]


@dataclass(frozen=True)
class Registration:
    """Rigid transform between a reference and a reconstruction.

    A point at ``p`` (sample x, y, z) in the reference frame is at ``rotation @ p + t`` in the
    reconstruction's frame, where ``t`` is ``translation_mm`` reversed: ``translation_mm`` is
    ordered (z, y, x) like every length triple of :class:`~labdct_live.grains.grainmap.GrainMap`.

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
