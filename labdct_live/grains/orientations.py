"""Orientation conversions (Bunge Euler angles, matrices, quaternions, Rodrigues vectors) and
reduction to the fundamental zone, in the package's active lab-from-crystal convention.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial.transform import Rotation

if TYPE_CHECKING:
    from labdct_live.grains.phase import Phase

__all__ = [
    "bunge_to_matrix",
    "matrix_to_bunge",
]


def bunge_to_matrix(euler_deg: np.ndarray) -> np.ndarray:
    """Orientation matrices ``U`` (crystal -> sample, MTEX) from Bunge angles in degrees.

    Parameters
    ----------
    euler_deg : array_like, shape (..., 3)
        ``(phi1, Phi, phi2)`` in degrees.

    Returns
    -------
    ndarray, shape (..., 3, 3)
        ``U = Rz(phi1) Rx(Phi) Rz(phi2)``.
    """
    euler = np.asarray(euler_deg, dtype=float)
    flat = euler.reshape(-1, 3)
    return Rotation.from_euler("ZXZ", flat, degrees=True).as_matrix().reshape(euler.shape + (3,))


def matrix_to_bunge(matrices: np.ndarray) -> np.ndarray:
    """Bunge angles in degrees, phi1 and phi2 in [0, 360), of orientation matrices ``U``.

    The inverse of :func:`bunge_to_matrix`.
    """
    mats = np.asarray(matrices, dtype=float)
    euler = Rotation.from_matrix(mats.reshape(-1, 3, 3)).as_euler("ZXZ", degrees=True)
    euler[:, [0, 2]] %= 360.0
    return euler.reshape(mats.shape[:-2] + (3,))


def _quaternions_wxyz(matrices: np.ndarray) -> np.ndarray:
    """Unit quaternions (w, x, y, z), w >= 0, of rotation matrices (..., 3, 3)."""
    xyzw = Rotation.from_matrix(matrices.reshape(-1, 3, 3)).as_quat()
    wxyz = np.roll(xyzw, 1, axis=1)
    wxyz[wxyz[:, 0] < 0] *= -1.0
    return wxyz.reshape(matrices.shape[:-2] + (4,))


def _matrices_from_wxyz(quaternions: np.ndarray) -> np.ndarray:
    q = np.asarray(quaternions, dtype=float).reshape(-1, 4)
    return Rotation.from_quat(np.roll(q, -1, axis=1)).as_matrix()


def _matrices_from_rodrigues(rodrigues: np.ndarray) -> np.ndarray:
    r = np.asarray(rodrigues, dtype=float).reshape(-1, 3)
    # r = axis tan(angle/2)  ->  q = (1, r) / |(1, r)|
    q = np.concatenate([np.ones((len(r), 1)), r], axis=1)
    return _matrices_from_wxyz(q / np.linalg.norm(q, axis=1, keepdims=True))


def _reduce_to_fundamental_zone(matrices: np.ndarray, phase: Phase) -> np.ndarray:
    """Symmetry-equivalent ``U S`` of smallest rotation angle (S in the proper point group)."""
    from orix.quaternion import Orientation

    # orix stores the passive rotation (sample -> crystal) = U^T.
    ori = Orientation.from_matrix(np.swapaxes(matrices, -1, -2), symmetry=phase.point_group)
    reduced = ori.reduce().to_matrix()
    return np.swapaxes(reduced, -1, -2)
