"""The per-grain table of a reconstruction (one row per grain of the final map)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from labdct_live.grains.orientations import matrix_to_bunge
from labdct_live.reconstruction.forward import ForwardModel

__all__ = ["GRAIN_COLUMNS", "grain_table"]

#: Columns of the per-grain table.
GRAIN_COLUMNS = ["grain_id", "x", "y", "z", "n_voxels", "volume", "diameter", "phi1", "Phi",
                 "phi2", "completeness", "voxel_completeness", "spots_predicted",
                 "spots_matched"]


def grain_table(model: ForwardModel, ids: np.ndarray, orientations: np.ndarray,
                completeness: np.ndarray, origin: np.ndarray, voxel: float, tol_px: float
                ) -> pd.DataFrame:
    """One row per grain id of ``ids`` (:data:`GRAIN_COLUMNS`): centroid, size, Bunge
    angles, completeness at the centroid and mean completeness of its voxels."""
    n = int(ids.max(initial=0))
    if n == 0:
        return pd.DataFrame(columns=GRAIN_COLUMNS)
    kk, jj, ii = np.nonzero(ids)
    lab = ids[kk, jj, ii]
    counts = np.bincount(lab, minlength=n + 1)[1:]
    xyz = origin + np.stack([ii, jj, kk], axis=1) * voxel
    centroid = np.stack([np.bincount(lab, weights=xyz[:, a], minlength=n + 1)[1:] / counts
                         for a in range(3)], axis=1)
    vox_comp = np.bincount(lab, weights=completeness[kk, jj, ii], minlength=n + 1)[1:] / counts
    s = model.score(centroid, orientations[1:], tol_px=tol_px)
    volume = counts * voxel**3
    euler = matrix_to_bunge(orientations[1:])
    return pd.DataFrame({
        "grain_id": np.arange(1, n + 1), "x": centroid[:, 0], "y": centroid[:, 1],
        "z": centroid[:, 2], "n_voxels": counts, "volume": volume,
        "diameter": np.cbrt(6 * volume / np.pi), "phi1": euler[:, 0], "Phi": euler[:, 1],
        "phi2": euler[:, 2], "completeness": s.completeness, "voxel_completeness": vox_comp,
        "spots_predicted": s.n_pred, "spots_matched": s.n_hit,
    })
