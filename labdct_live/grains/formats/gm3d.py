"""GrainMapper3D grain-map files (HDF5, ``LabDCT/Data``): :func:`write_gm3d`, :func:`read_gm3d`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from labdct_live import __version__
from labdct_live.grains.grainmap import GrainMap
from labdct_live.grains.orientations import (
    _matrices_from_rodrigues,
    _matrices_from_wxyz,
    _quaternions_wxyz,
    _reduce_to_fundamental_zone,
    bunge_to_matrix,
    matrix_to_bunge,
)
from labdct_live.grains.phase import ALUMINIUM, GrainMapError, Phase
from labdct_live.io.output import atomic_file

__all__ = [
    "GrainMapFormatError",
    "read_gm3d",
    "write_gm3d",
]

logger = logging.getLogger(__name__)


GM3D_VERSIONS = (3, 4, 5)

_DATA = "LabDCT/Data"


class GrainMapFormatError(GrainMapError):
    """A grain-map file that lacks a required dataset or holds inconsistent data."""


def _write_str(group: h5py.Group, name: str, value: str) -> None:
    group.create_dataset(name, data=np.array([value], dtype=object),
                         dtype=h5py.string_dtype("ascii"))


def _write_scalar(group: h5py.Group, name: str, value: Any, dtype: Any) -> None:
    group.create_dataset(name, data=np.array([value], dtype=dtype))


def _per_grain_voxel_tables(
    gm: GrainMap, ipf: bool
) -> dict[str, tuple[np.ndarray, Any]]:
    """Per-grain rows of every per-voxel orientation dataset (row 0 = zeros)."""
    n_rows = len(gm.orientations)
    present = gm.grain_list
    mats = gm.orientations[:n_rows].copy()
    for phase_id, phase in gm.phases.items():
        sel = present[gm.phase_ids[present] == phase_id]
        if sel.size:
            mats[sel] = _reduce_to_fundamental_zone(mats[sel], phase)
    quat = np.zeros((n_rows, 4))
    euler = np.zeros((n_rows, 3))
    if present.size:
        quat[present] = _quaternions_wxyz(mats[present])
        euler[present] = np.radians(matrix_to_bunge(mats[present]))
    with np.errstate(divide="ignore", invalid="ignore"):
        rod = np.where(quat[:, :1] > 0, quat[:, 1:] / quat[:, :1], 0.0)
    tables: dict[str, tuple[np.ndarray, Any]] = {
        "Rodrigues": (rod, np.float32),
        "EulerZXZ": (euler, np.float32),
        "Quaternion": (quat, np.float32),
    }
    if ipf and present.size:
        from orix.plot import IPFColorKeyTSL
        from orix.vector import Vector3d

        for name, direction in (("IPF001", (0, 0, 1)), ("IPF010", (0, 1, 0)),
                                ("IPF100", (1, 0, 0))):
            rgb = np.zeros((n_rows, 3))
            for phase_id, phase in gm.phases.items():
                sel = present[gm.phase_ids[present] == phase_id]
                if sel.size:
                    key = IPFColorKeyTSL(phase.point_group.laue, direction=Vector3d(direction))
                    rgb[sel] = key.orientation2color(gm.orix_orientations(sel))
            tables[name] = (np.round(rgb * 255), np.uint8)
    return tables


def write_gm3d(
    path: str | os.PathLike,
    grainmap: GrainMap,
    *,
    version: int = 5,
    euler: bool = True,
    quaternion: bool = True,
    ipf: bool = False,
    name: str = "labdct-live",
    acquisition: Mapping[str, float | int | str] | None = None,
) -> Path:
    """Write a grain map as a GrainMapper3D result file (layout in the module docstring).

    The file is written under a temporary name and renamed when complete.

    Parameters
    ----------
    path : path-like
        Output ``.h5`` file.
    grainmap : GrainMap
        The map to write.
    version : {3, 4, 5}
        Layout version written to ``/Version``.
    euler, quaternion : bool
        Also write the optional ``EulerZXZ`` (radians) and ``Quaternion`` datasets.
    ipf : bool
        Also write ``IPF001/010/100`` (uint8 RGB, orix's TSL colour key).
    name : str
        ``/LabDCT/Name`` (v4+).
    acquisition : dict, optional
        Acquisition parameters written into ``/LabDCT`` (v4+), e.g.
        ``{"SourceToSampleDistance": 13.0, "SampleToDetectorDistance": 11.0,
        "NumberOfProjections": 181, "Voltage": 140.0}``.

    Returns
    -------
    Path
        The written file.
    """
    if version not in GM3D_VERSIONS:
        raise GrainMapError(f"version={version}: GrainMapper3D layouts {GM3D_VERSIONS} supported")
    path = Path(path)
    gm = grainmap
    ids = gm.grain_ids
    nz, ny, nx = ids.shape
    tables = _per_grain_voxel_tables(gm, ipf)
    if not euler:
        tables.pop("EulerZXZ")
    if not quaternion:
        tables.pop("Quaternion")
    tables = {key: (table.astype(dtype), dtype) for key, (table, dtype) in tables.items()}
    phase_table = gm.phase_ids.astype(np.uint8)
    phase_table[0] = 0
    xyz = slice(None, None, -1)  # (z, y, x) -> (x, y, z)
    with atomic_file(path) as tmp:
        with h5py.File(tmp, "w") as f:
            _write_scalar(f, "Version", version, np.int32)
            _write_str(f, "Date", datetime.now().astimezone().strftime("%m/%d/%y %H:%M:%S %z"))
            info = f.create_group("ProjectInfo")
            for key in ("AbsorptionFile", "DCTFile", "ProjectFile"):
                _write_str(info, key, "")
            _write_str(info, "Version", f"labdct-live {_package_version()}")
            lab = f.create_group("LabDCT")
            lab.create_dataset("Center", data=np.asarray(gm.center, float)[xyz])
            lab.create_dataset("Extent", data=np.asarray(gm.extent, float)[xyz])
            lab.create_dataset("Spacing", data=np.asarray(gm.spacing, float)[xyz])
            lab.create_dataset("VirtualShift", data=np.zeros(3))
            if version >= 4:
                _write_str(lab, "Name", name)
                for key, value in (acquisition or {}).items():
                    if isinstance(value, str):
                        _write_str(lab, key, value)
                    elif isinstance(value, (int, np.integer)):
                        _write_scalar(lab, key, value, np.int32)
                    else:
                        _write_scalar(lab, key, value, np.float64)
            if version >= 5:
                labels = lab.create_group("Labels")
                labels.create_dataset("Colors", shape=(0,), dtype=np.int32)
                labels.create_dataset("Labels", shape=(0,), dtype=np.uint8)
                labels.create_dataset("Names", shape=(0,), dtype=h5py.string_dtype("ascii"))
            data = lab.create_group("Data")
            chunk = (1, ny, nx)
            out = {
                "Completeness": data.create_dataset("Completeness", ids.shape, np.float32,
                                                    chunks=chunk),
                "GrainId": data.create_dataset("GrainId", ids.shape, np.int32, chunks=chunk),
                "Mask": data.create_dataset("Mask", ids.shape, np.uint8, chunks=chunk),
                "PhaseId": data.create_dataset("PhaseId", ids.shape, np.uint8, chunks=chunk),
            }
            for key, (table, dtype) in tables.items():
                width = table.shape[1]
                out[key] = data.create_dataset(key, ids.shape + (width,), dtype,
                                               chunks=chunk + (width,))
            # One z-slice at a time keeps memory at a few slices for any volume size.
            for z in range(nz):
                sl = ids[z]
                out["GrainId"][z] = sl
                if gm.completeness is None:
                    out["Completeness"][z] = (sl > 0).astype(np.float32)
                else:
                    out["Completeness"][z] = gm.completeness[z]
                out["Mask"][z] = (sl > 0) if gm.mask is None else gm.mask[z]
                out["PhaseId"][z] = phase_table[sl]
                for key, (table, _) in tables.items():
                    out[key][z] = table[sl]
            phase_group = f.create_group("PhaseInfo")
            for phase_id, phase in sorted(gm.phases.items()):
                g = phase_group.create_group(f"Phase{phase_id:02d}")
                _write_str(g, "FileName", "")
                _write_str(g, "Name", phase.name)
                _write_scalar(g, "SpaceGroup", phase.space_group, np.int32)
                g.create_dataset("UnitCell", data=np.asarray(phase.unit_cell, float))
                _write_str(g, "UniversalHermannMauguin", phase.hermann_mauguin)
    logger.info("wrote %s: %d grains, %s voxels", path, gm.n_grains, ids.shape)
    return path


def _package_version() -> str:

    return __version__


def _require(f: h5py.File, key: str, path: Path) -> h5py.Dataset:
    if key not in f:
        raise GrainMapFormatError(f"{path}: dataset /{key} is missing; not a grain-map file?")
    return f[key]


def _read_str(node: h5py.Dataset) -> str:
    value = node[()]
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else b""
    return value.decode() if isinstance(value, bytes) else str(value)


def _first_voxel_values(
    ids: h5py.Dataset | np.ndarray, values: h5py.Dataset | None, n_rows: int, width: int
) -> np.ndarray:
    """Value of each grain's first voxel (z, y, x order), read one z-slice at a time."""
    out = np.full((n_rows, width), np.nan)
    seen = np.zeros(n_rows, dtype=bool)
    seen[0] = True
    for z in range(ids.shape[0]):
        sl = np.asarray(ids[z]).ravel()
        uniq, first = np.unique(sl, return_index=True)
        new = ~seen[uniq]
        if new.any():
            vals = np.asarray(values[z]).reshape(-1, width)
            out[uniq[new]] = vals[first[new]]
            seen[uniq[new]] = True
        if seen.all():
            break
    return out


def _read_phases(f: h5py.File, path: Path) -> dict[int, Phase]:
    phases: dict[int, Phase] = {}
    group = f.get("PhaseInfo")
    if group is None:
        raise GrainMapFormatError(f"{path}: group /PhaseInfo is missing")
    for key in group:
        if not key.startswith("Phase") or not key[5:].isdigit():
            continue
        g = group[key]
        for need in ("SpaceGroup", "UnitCell"):
            _require(f, f"PhaseInfo/{key}/{need}", path)
        phases[int(key[5:])] = Phase(
            name=_read_str(g["Name"]) if "Name" in g else key,
            space_group=int(np.asarray(g["SpaceGroup"][()]).reshape(-1)[0]),
            unit_cell=tuple(np.asarray(g["UnitCell"][()], float).reshape(-1)[:6]),
            hermann_mauguin=(_read_str(g["UniversalHermannMauguin"])
                             if "UniversalHermannMauguin" in g else ""),
        )
    return phases


def read_gm3d(
    path: str | os.PathLike, *, euler_unit: str = "rad", prefer: str = "auto"
) -> GrainMap:
    """Read a GrainMapper3D result file (versions 3-5) or GrainRecon's variant of it.

    Parameters
    ----------
    path : path-like
        The ``.h5`` file.
    euler_unit : {"rad", "deg"}
        Unit of ``/LabDCT/Data/EulerZXZ`` (GrainMapper3D: radians; GrainRecon: degrees).
    prefer : {"auto", "rodrigues", "quaternion", "euler"}
        Which orientation dataset to use. "auto" takes Rodrigues, then Quaternion, then
        EulerZXZ, whichever is present first.

    Returns
    -------
    GrainMap

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    GrainMapFormatError
        If a required dataset is missing or the version is not 3-5.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grain-map file {path} does not exist")
    if euler_unit not in ("rad", "deg"):
        raise GrainMapError(f"euler_unit={euler_unit!r}: use 'rad' or 'deg'")
    with h5py.File(path, "r") as f:
        version = int(np.asarray(_require(f, "Version", path)[()]).reshape(-1)[0])
        if version not in GM3D_VERSIONS:
            raise GrainMapFormatError(
                f"{path}: layout version {version}; versions {GM3D_VERSIONS} are supported"
            )
        ids_ds = _require(f, f"{_DATA}/GrainId", path)
        spacing = np.asarray(_require(f, "LabDCT/Spacing", path)[()], float)[::-1]
        center = np.asarray(_require(f, "LabDCT/Center", path)[()], float)[::-1]
        order = {"auto": ("Rodrigues", "Quaternion", "EulerZXZ"), "rodrigues": ("Rodrigues",),
                 "quaternion": ("Quaternion",), "euler": ("EulerZXZ",)}.get(prefer)
        if order is None:
            raise GrainMapError(f"prefer={prefer!r}: use auto, rodrigues, quaternion or euler")
        source = next((k for k in order if f"{_DATA}/{k}" in f), None)
        if source is None:
            raise GrainMapFormatError(
                f"{path}: no orientation dataset; expected one of "
                f"{', '.join('/' + _DATA + '/' + k for k in order)}"
            )
        ids = ids_ds[()]
        if ids.ndim != 3:
            raise GrainMapFormatError(f"{path}: GrainId has shape {ids.shape}, expected Z x Y x X")
        n_rows = int(ids.max(initial=0)) + 1
        values_ds = f[f"{_DATA}/{source}"]
        if values_ds.shape[:3] != ids.shape:
            raise GrainMapFormatError(
                f"{path}: {source} has shape {values_ds.shape}, GrainId {ids.shape}"
            )
        width = {"Rodrigues": 3, "Quaternion": 4, "EulerZXZ": 3}[source]
        per_grain = _first_voxel_values(ids, values_ds, n_rows, width)
        phase_voxels = (f[f"{_DATA}/PhaseId"] if f"{_DATA}/PhaseId" in f else None)
        if phase_voxels is not None:
            phase_ids = _first_voxel_values(ids, phase_voxels, n_rows, 1)[:, 0]
            phase_ids = np.nan_to_num(phase_ids, nan=0).astype(np.int64)
        else:
            phase_ids = np.ones(n_rows, np.int64)
        if "PhaseInfo" in f:
            phases = _read_phases(f, path)
        else:
            logger.warning("%s: no /PhaseInfo; assuming phase 1 is aluminium", path)
            phases = {1: ALUMINIUM}
        completeness = f[f"{_DATA}/Completeness"][()] if f"{_DATA}/Completeness" in f else None
        mask = f[f"{_DATA}/Mask"][()] if f"{_DATA}/Mask" in f else None
        name = _read_str(f["LabDCT/Name"]) if "LabDCT/Name" in f else ""
    orientations = np.full((n_rows, 3, 3), np.nan)
    ok = np.all(np.isfinite(per_grain), axis=1)
    if source == "Rodrigues":
        orientations[ok] = _matrices_from_rodrigues(per_grain[ok])
    elif source == "Quaternion":
        orientations[ok] = _matrices_from_wxyz(per_grain[ok])
    else:
        euler = per_grain[ok] if euler_unit == "deg" else np.degrees(per_grain[ok])
        orientations[ok] = bunge_to_matrix(euler)
    gm = GrainMap(
        grain_ids=ids, spacing=tuple(spacing), orientations=orientations,  # type: ignore
        phase_ids=phase_ids, phases=phases, center=tuple(center),  # type: ignore
        completeness=completeness, mask=mask,
        metadata={"format": "gm3d", "version": version, "orientation_source": source,
                  "name": name, "path": str(path)},
    )
    logger.info("read %s: version %d, %d grains, %s", path, version, gm.n_grains, ids.shape)
    return gm
