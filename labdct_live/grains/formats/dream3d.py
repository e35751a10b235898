"""DREAM.3D grain maps (``.dream3d``), read with the inverse (passive) rotation DREAM.3D stores."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from scipy.spatial.transform import Rotation

from labdct_live.grains.formats.gm3d import GrainMapFormatError, _first_voxel_values, _require
from labdct_live.grains.formats.grainrecon import _DREAM3D_LAUE_TO_SPACE_GROUP
from labdct_live.grains.grainmap import GrainMap
from labdct_live.grains.orientations import bunge_to_matrix
from labdct_live.grains.phase import Phase

__all__ = [
    "read_dream3d",
]

logger = logging.getLogger(__name__)


def read_dream3d(
    path: str | os.PathLike,
    *,
    container: str | None = None,
    length_unit_mm: float = 1e-3,
    phase_names: Sequence[str] | None = None,
) -> GrainMap:
    """Read a DREAM.3D (SIMPL, ``.dream3d``) image data container.

    Reads ``/DataContainers/<container>/CellData/{FeatureIds, EulerAngles, Phases}`` and the
    geometry ``_SIMPL_GEOMETRY/{DIMENSIONS, SPACING, ORIGIN}`` (x, y, z order; ORIGIN is the
    outer corner of voxel 0). Orientation: DREAM.3D stores the passive rotation (sample ->
    crystal), the inverse of MTEX's ``U``. Bunge Euler angles name the same physical
    orientation in both conventions (``U = Rz(phi1) Rx(Phi) Rz(phi2)``, DREAM.3D's matrix
    is its transpose), so ``EulerAngles`` are used as they are; a ``Quats`` array (x, y, z, w)
    is conjugated. A grain's orientation is that of its first voxel.

    Parameters
    ----------
    path : path-like
        The ``.dream3d`` file.
    container : str, optional
        Data container name; default: the only one holding ``CellData/FeatureIds``.
    length_unit_mm : float
        Millimetres per DREAM.3D length unit (DREAM.3D works in µm by convention: 1e-3).
    phase_names : sequence of str, optional
        Names of phases 1, 2, ... (default from ``CellEnsembleData/PhaseName`` or "PhaseN").

    Returns
    -------
    GrainMap
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DREAM.3D file {path} does not exist")
    with h5py.File(path, "r") as f:
        root = f.get("DataContainers")
        if root is None:
            raise GrainMapFormatError(f"{path}: group /DataContainers is missing; not DREAM.3D")
        candidates = [k for k in root if "CellData/FeatureIds" in root[k]]
        if container is None:
            if len(candidates) != 1:
                raise GrainMapFormatError(
                    f"{path}: {len(candidates)} data containers hold CellData/FeatureIds "
                    f"({candidates}); pass container=NAME"
                )
            container = candidates[0]
        base = f"DataContainers/{container}"
        ids = np.asarray(_require(f, f"{base}/CellData/FeatureIds", path)[()])
        geom = f"{base}/_SIMPL_GEOMETRY"
        dims = np.asarray(_require(f, f"{geom}/DIMENSIONS", path)[()]).reshape(-1)
        spacing = np.asarray(_require(f, f"{geom}/SPACING", path)[()], float).reshape(-1)
        origin = np.asarray(_require(f, f"{geom}/ORIGIN", path)[()], float).reshape(-1)
        shape = tuple(int(v) for v in dims[::-1])
        ids = ids.reshape(shape).astype(np.int32)
        n_rows = int(ids.max(initial=0)) + 1
        cell = f[f"{base}/CellData"]
        if "EulerAngles" in cell:
            euler = _first_voxel_values(ids, cell["EulerAngles"], n_rows, 3)
            ok = np.all(np.isfinite(euler), axis=1)
            orientations = np.full((n_rows, 3, 3), np.nan)
            orientations[ok] = bunge_to_matrix(np.degrees(euler[ok]))
        elif "Quats" in cell:
            q = _first_voxel_values(ids, cell["Quats"], n_rows, 4)
            ok = np.all(np.isfinite(q), axis=1)
            orientations = np.full((n_rows, 3, 3), np.nan)
            # (x, y, z, w) of the passive rotation; U is its inverse.
            orientations[ok] = Rotation.from_quat(q[ok]).inv().as_matrix()
        else:
            raise GrainMapFormatError(
                f"{path}: {base}/CellData has neither EulerAngles nor Quats"
            )
        if "Phases" in cell:
            phase_ids = _first_voxel_values(ids, cell["Phases"], n_rows, 1)[:, 0]
            phase_ids = np.nan_to_num(phase_ids, nan=0).astype(np.int64)
        else:
            phase_ids = np.ones(n_rows, np.int64)
        phases = _dream3d_phases(f, base, phase_names)
    extent = spacing * dims
    center = (origin + extent / 2) * length_unit_mm
    gm = GrainMap(
        grain_ids=ids, spacing=tuple(spacing[::-1] * length_unit_mm),  # type: ignore
        orientations=orientations, phase_ids=phase_ids, phases=phases,
        center=tuple(center[::-1]),  # type: ignore
        metadata={"format": "dream3d", "container": container, "path": str(path)},
    )
    logger.info("read %s: container %s, %d grains, %s", path, container, gm.n_grains, shape)
    return gm


def _dream3d_phases(
    f: h5py.File, base: str, phase_names: Sequence[str] | None
) -> dict[int, Phase]:
    ensemble = f.get(f"{base}/CellEnsembleData")
    structures = (np.asarray(ensemble["CrystalStructures"][()]).reshape(-1)
                  if ensemble is not None and "CrystalStructures" in ensemble
                  else np.array([999, 1]))
    lattice = (np.asarray(ensemble["LatticeConstants"][()], float).reshape(-1, 6)
               if ensemble is not None and "LatticeConstants" in ensemble else None)
    names = list(phase_names or [])
    if not names and ensemble is not None and "PhaseName" in ensemble:
        names = [v.decode() if isinstance(v, bytes) else str(v)
                 for v in np.asarray(ensemble["PhaseName"][()]).reshape(-1)[1:]]
    phases = {}
    for k in range(1, len(structures)):  # entry 0 is DREAM.3D's "unknown" phase
        laue = int(structures[k])
        if laue not in _DREAM3D_LAUE_TO_SPACE_GROUP:
            raise GrainMapFormatError(f"phase {k}: unknown DREAM.3D CrystalStructures={laue}")
        cell = tuple(lattice[k]) if lattice is not None and len(lattice) > k else (
            1.0, 1.0, 1.0, 90.0, 90.0, 90.0)
        phases[k] = Phase(names[k - 1] if k - 1 < len(names) else f"Phase{k}",
                          _DREAM3D_LAUE_TO_SPACE_GROUP[laue], cell)  # type: ignore[arg-type]
    return phases
