"""Orientation grids, cubic symmetry and misorientations (U maps crystal to sample, MTEX).

orix stores the passive rotation (sample to crystal), the transpose of U; every conversion to
and from orix happens here. ``misorientation_deg`` is checked against orix's in the tests.
"""

from __future__ import annotations

import os
from functools import lru_cache
from itertools import permutations, product
from pathlib import Path

import numpy as np

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


def _cache_file(resolution_deg: float, space_group: int) -> Path:
    from importlib.metadata import version

    root = Path(os.environ.get("LABDCT_CACHE_DIR") or Path.home() / ".cache" / "labdct-live")
    return root / "orientation-grids" / (
        f"fz_sg{space_group}_{resolution_deg:g}deg_orix{version('orix')}.npy")


@lru_cache(maxsize=4)
def _grid(resolution_deg: float, space_group: int) -> np.ndarray:
    path = _cache_file(resolution_deg, space_group)
    try:
        cached = np.load(path, allow_pickle=False)
        if cached.ndim == 3 and cached.shape[1:] == (3, 3):
            return np.ascontiguousarray(cached)
    except (OSError, ValueError):
        pass
    from orix.quaternion.symmetry import get_point_group
    from orix.sampling import get_sample_fundamental

    point_group = get_point_group(space_group, proper=True)
    rotations = get_sample_fundamental(resolution_deg, point_group=point_group)
    passive = rotations.to_matrix().reshape(-1, 3, 3)
    grid = np.ascontiguousarray(np.swapaxes(passive, 1, 2))
    try:  # orix takes seconds for a grid: keep it (plain .npy, no pickle)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial.npy")
        np.save(tmp, grid, allow_pickle=False)
        os.replace(tmp, path)
    except OSError:
        pass
    return grid


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
        Cached per (resolution, space group) in memory, and on disk as a plain ``.npy``
        under ``$LABDCT_CACHE_DIR`` or ``~/.cache/labdct-live`` (orix needs seconds to
        build a grid); do not modify it.
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
    v = np.radians(np.asarray(rotvec_deg, float).reshape(-1, 3))
    # Rodrigues' formula (scipy's Rotation costs more than the simplex's score call)
    angle = np.linalg.norm(v, axis=1)
    axis = v / np.where(angle > 0, angle, 1.0)[:, None]
    k = np.zeros((len(v), 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k[:, 1, 0], k[:, 2, 0], k[:, 2, 1] = axis[:, 2], -axis[:, 1], axis[:, 0]
    sin, cos = np.sin(angle)[:, None, None], np.cos(angle)[:, None, None]
    r = np.eye(3) + sin * k + (1.0 - cos) * (k @ k)
    out = r @ np.asarray(u, float)
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
