"""Orientation grids, cubic symmetry and misorientations (U maps crystal to sample, MTEX).

orix stores the passive rotation (sample to crystal), the transpose of U; every conversion to
and from orix happens here. ``misorientation_deg`` is checked against orix's in the tests.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import permutations, product

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = ["cubic_operators", "fundamental_zone_grid", "misorientation_deg", "perturb",
           "select_distinct"]


@lru_cache(maxsize=1)
def cubic_operators() -> np.ndarray:
    """The 24 proper rotations of the cube, shape (24, 3, 3)."""
    ops = []
    for perm in permutations(range(3)):
        for signs in product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            for row, (col, sign) in enumerate(zip(perm, signs)):
                m[row, col] = sign
            if np.linalg.det(m) > 0:
                ops.append(m)
    return np.array(ops)


@lru_cache(maxsize=4)
def _grid(resolution_deg: float, space_group: int) -> np.ndarray:
    from orix.quaternion.symmetry import get_point_group
    from orix.sampling import get_sample_fundamental

    point_group = get_point_group(space_group, proper=True)
    rotations = get_sample_fundamental(resolution_deg, point_group=point_group)
    passive = rotations.to_matrix().reshape(-1, 3, 3)
    return np.ascontiguousarray(np.swapaxes(passive, 1, 2))


def fundamental_zone_grid(resolution_deg: float, space_group: int = 225) -> np.ndarray:
    """Orientation matrices U covering the fundamental zone at about ``resolution_deg``.

    Parameters
    ----------
    resolution_deg : float
        Grid spacing (degrees), orix's ``get_sample_fundamental`` (cubochoric sampling).
    space_group : int
        Space group of the phase; its proper point group defines the zone.

    Returns
    -------
    ndarray, shape (n, 3, 3)
        Cached per (resolution, space group); do not modify it.
    """
    if not 0.25 <= resolution_deg <= 20:
        raise ValueError(f"resolution_deg must be in [0.25, 20] degrees, got {resolution_deg}")
    return _grid(float(resolution_deg), int(space_group))


def misorientation_deg(u_a: np.ndarray, u_b: np.ndarray) -> np.ndarray:
    """Cubic disorientation angle (degrees) between orientation matrices, broadcast.

    ``min over S of angle(U_aᵀ U_b S)`` with S the 24 proper cube rotations
    (docs/physics.md §11).

    Parameters
    ----------
    u_a, u_b : ndarray, shape (..., 3, 3)

    Returns
    -------
    ndarray, shape (...)
    """
    delta = np.swapaxes(np.asarray(u_a, float), -1, -2) @ np.asarray(u_b, float)
    # tr(D S) = sum_ij D_ij S_ji
    traces = np.einsum("...ij,sji->...s", delta, cubic_operators())
    cos = np.clip((traces.max(axis=-1) - 1.0) / 2.0, -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def perturb(u: np.ndarray, rotvec_deg: np.ndarray) -> np.ndarray:
    """``R(δ) U``: U turned by the rotation vector δ (degrees, sample frame)."""
    r = Rotation.from_rotvec(np.radians(np.asarray(rotvec_deg, float).reshape(-1, 3)))
    out = r.as_matrix() @ np.asarray(u, float)
    return out[0] if np.ndim(rotvec_deg) == 1 else out


def select_distinct(mats: np.ndarray, order: np.ndarray, n: int, min_angle_deg: float
                    ) -> list[int]:
    """The first ``n`` indices of ``order`` that are ``min_angle_deg`` apart (cubic)."""
    chosen: list[int] = []
    for idx in order:
        if len(chosen) == n:
            break
        if chosen and misorientation_deg(mats[chosen], mats[idx]).min() < min_angle_deg:
            continue
        chosen.append(int(idx))
    return chosen
