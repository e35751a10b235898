"""Grain maps: the in-memory model and the GrainMapper3D / GrainRecon / DREAM.3D file formats.

In memory
---------
A :class:`GrainMap` holds a grain-id volume ``grain_ids`` (Z x Y x X, int32, 0 = no grain),
its voxel ``spacing`` and volume ``center`` in mm, both ordered **(z, y, x)** like the array
axes, and per-grain tables indexed by grain id (row 0 belongs to "no grain"):

* ``orientations`` (n, 3, 3): orientation matrices ``U`` that map crystal coordinates onto
  sample coordinates, ``r = U h`` (the MTEX and GrainMapper3D convention). From Bunge
  angles ``(phi1, Phi, phi2)``, ``U = Rz(phi1) Rx(Phi) Rz(phi2)``, i.e. scipy's
  ``Rotation.from_euler("ZXZ", [phi1, Phi, phi2]).as_matrix()``. The sample frame's x, y, z
  axes run along the array axes 2, 1, 0.
* ``phase_ids`` (n,): phase of each grain, a key of ``phases`` (1, 2, ...).

plus ``phases`` (phase id -> :class:`Phase`) and optional per-voxel ``completeness`` and
sample ``mask``. Voxel ``(k, j, i)`` has its centre at
``center + ((k, j, i) - (shape - 1) / 2) * spacing``.

GrainMapper3D result files (spec "gm3dh5", versions 3-5)
---------------------------------------------------------
HDF5; volumes stored Z x Y x X; lengths in mm; the 3-vectors ``Center``, ``Extent``,
``Spacing`` and ``VirtualShift`` are stored in **(x, y, z)** order (``Extent = Spacing * N``;
``Center`` is the centre of that box). Layout written by :func:`write_gm3d` (as in the
GrainMapper3D 4.0 example file, version 5; strings are variable-length ASCII of shape (1,),
scalars have shape (1,), volumes are chunked one z-slice per chunk)::

    /Version                         int32 (1,)        3, 4 or 5
    /Date                            str (1,)          "%m/%d/%y %H:%M:%S %z"
    /ProjectInfo/{AbsorptionFile, DCTFile, ProjectFile, Version}   str (1,)
    /LabDCT/Center, Extent, Spacing, VirtualShift                  float64 (3,) mm, (x, y, z)
    /LabDCT/Name                     str (1,)          (v4+)
    /LabDCT/Data/GrainId             int32   Z x Y x X
    /LabDCT/Data/Completeness        float32 Z x Y x X (1 in grains when not given, 0 outside)
    /LabDCT/Data/Mask                uint8   Z x Y x X (sample mask; grain_ids > 0 by default)
    /LabDCT/Data/PhaseId             uint8   Z x Y x X
    /LabDCT/Data/Rodrigues           float32 Z x Y x X x 3   axis * tan(angle / 2) of U
    /LabDCT/Data/EulerZXZ            float32 Z x Y x X x 3   Bunge angles of U, radians
    /LabDCT/Data/Quaternion          float32 Z x Y x X x 4   (w, x, y, z) of U, w >= 0
    /LabDCT/Data/IPF001, IPF010, IPF100   uint8 Z x Y x X x 3 (optional; orix TSL key)
    /LabDCT/Labels/{Colors, Labels, Names}   empty (v5)
    /PhaseInfo/PhaseNN/{Name, SpaceGroup int32 (1,), UnitCell float64 (6,) (Å, °),
                        UniversalHermannMauguin, FileName}

Orientations are written per voxel (every voxel of a grain carries the grain's orientation),
reduced to the fundamental zone of the phase's proper point group (as GrainMapper3D does:
the Rodrigues vectors of the example file satisfy the cubic zone's bounds). Voxels outside
grains carry zeros in every orientation dataset. On reading, a grain's orientation is that
of its first voxel in z, y, x order (GrainMapper3D grains have one orientation).

GrainRecon writes the same layout with Euler angles in degrees (:func:`read_grainrecon`).
DREAM.3D files are read by :func:`read_dream3d`; DREAM.3D stores the inverse (passive)
rotation, see that function.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy.spatial.transform import Rotation

__all__ = [
    "ALUMINIUM",
    "GrainMap",
    "GrainMapError",
    "GrainMapFormatError",
    "Phase",
    "bunge_to_matrix",
    "matrix_to_bunge",
    "read_dream3d",
    "read_gm3d",
    "read_grainmap",
    "read_grainrecon",
    "write_gm3d",
]

logger = logging.getLogger(__name__)

GM3D_VERSIONS = (3, 4, 5)
_DATA = "LabDCT/Data"


class GrainMapError(ValueError):
    """A grain map that cannot be built or used as asked; the message names the parameter."""


class GrainMapFormatError(GrainMapError):
    """A grain-map file that lacks a required dataset or holds inconsistent data."""


# --------------------------------------------------------------------------- phases


@dataclass(frozen=True)
class Phase:
    """A crystallographic phase of a grain map.

    Parameters
    ----------
    name : str
        Phase name, e.g. ``"Aluminum"``.
    space_group : int
        International space-group number (1-230).
    unit_cell : tuple of 6 float
        ``(a, b, c, alpha, beta, gamma)`` in Å and degrees.
    hermann_mauguin : str, optional
        Space-group symbol, e.g. ``"F m -3 m"``.
    """

    name: str
    space_group: int
    unit_cell: tuple[float, float, float, float, float, float]
    hermann_mauguin: str = ""

    def __post_init__(self) -> None:
        if not 1 <= int(self.space_group) <= 230:
            raise GrainMapError(
                f"Phase {self.name!r}: space_group={self.space_group} is not in 1-230"
            )
        cell = tuple(float(v) for v in self.unit_cell)
        if len(cell) != 6:
            raise GrainMapError(
                f"Phase {self.name!r}: unit_cell needs 6 values (a, b, c, alpha, beta, gamma),"
                f" got {len(cell)}"
            )
        object.__setattr__(self, "unit_cell", cell)
        object.__setattr__(self, "space_group", int(self.space_group))

    @property
    def is_cubic(self) -> bool:
        """True for the cubic space groups 195-230."""
        return 195 <= self.space_group <= 230

    @property
    def point_group(self):
        """The proper point group (rotations only) as an :class:`orix.quaternion.Symmetry`."""
        from orix.quaternion.symmetry import get_point_group

        return get_point_group(self.space_group, proper=True)

    @classmethod
    def coerce(cls, value: Phase | Mapping[str, Any]) -> Phase:
        """Make a :class:`Phase` from a Phase or a dict with the same keys."""
        if isinstance(value, Phase):
            return value
        if isinstance(value, Mapping):
            return cls(**dict(value))
        raise GrainMapError(f"phases: expected Phase or dict, got {type(value).__name__}")


#: The default phase (the paper's virtual samples are aluminium).
ALUMINIUM = Phase("Aluminum", 225, (4.04958, 4.04958, 4.04958, 90.0, 90.0, 90.0), "F m -3 m")


# --------------------------------------------------------------------------- orientations


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


# --------------------------------------------------------------------------- the model


def _vector3(value: Sequence[float] | float, name: str) -> tuple[float, float, float]:
    arr = np.broadcast_to(np.asarray(value, dtype=float), (3,))
    if not np.all(np.isfinite(arr)):
        raise GrainMapError(f"{name}={value!r} must be finite")
    return tuple(float(v) for v in arr)  # type: ignore[return-value]


def _per_grain_table(
    values: Mapping[int, Any] | np.ndarray | int,
    n_rows: int,
    item_shape: tuple[int, ...],
    dtype: Any,
    name: str,
    fill: Any,
) -> np.ndarray:
    """A per-grain array of ``n_rows`` rows from a dict {grain id: value} or an id-indexed array."""
    if isinstance(values, Mapping):
        table = np.full((n_rows,) + item_shape, fill, dtype=dtype)
        for grain_id, value in values.items():
            if not 0 < int(grain_id) < n_rows:
                continue  # a grain that is not in the volume
            table[int(grain_id)] = value
        return table
    arr = np.asarray(values, dtype=dtype)
    if arr.shape == item_shape:  # one value for every grain
        return np.broadcast_to(arr, (n_rows,) + item_shape).copy()
    if arr.shape[1:] != item_shape or arr.shape[0] < n_rows:
        raise GrainMapError(
            f"{name}: expected a dict {{grain_id: value}} or an array of shape "
            f"({n_rows}, {', '.join(map(str, item_shape))}) indexed by grain id "
            f"(row 0 unused), got shape {arr.shape}"
        )
    return arr[:n_rows].copy()


@dataclass
class GrainMap:
    """A 3D grain map: grain-id volume, geometry, per-grain orientations and phases.

    Build one with :meth:`from_grain_ids`; the fields are described in the module docstring.
    """

    grain_ids: np.ndarray
    spacing: tuple[float, float, float]
    orientations: np.ndarray
    phase_ids: np.ndarray
    phases: dict[int, Phase]
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    completeness: np.ndarray | None = None
    mask: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = np.asarray(self.grain_ids)
        if ids.ndim != 3:
            raise GrainMapError(f"grain_ids must be a 3D (Z, Y, X) volume, got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise GrainMapError(f"grain_ids must hold integers, got dtype {ids.dtype}")
        self.grain_ids = ids.astype(np.int32, copy=False)
        if self.grain_ids.size and self.grain_ids.min() < 0:
            raise GrainMapError("grain_ids must be >= 0 (0 = no grain)")
        self.spacing = _vector3(self.spacing, "spacing")
        if min(self.spacing) <= 0:
            raise GrainMapError(f"spacing={self.spacing} must be positive (mm)")
        self.center = _vector3(self.center, "center")
        n_rows = int(self.grain_ids.max(initial=0)) + 1
        self.orientations = np.asarray(self.orientations, dtype=float)
        self.phase_ids = np.asarray(self.phase_ids, dtype=np.int64)
        if self.orientations.shape[0] < n_rows or self.orientations.shape[1:] != (3, 3):
            raise GrainMapError(
                f"orientations must have shape (>= {n_rows}, 3, 3) (indexed by grain id), "
                f"got {self.orientations.shape}"
            )
        if self.phase_ids.shape[0] < n_rows:
            raise GrainMapError(
                f"phase_ids must have >= {n_rows} entries (indexed by grain id), "
                f"got {self.phase_ids.shape}"
            )
        self.phases = {int(k): Phase.coerce(v) for k, v in self.phases.items()}
        present = self.grain_list
        missing = set(np.unique(self.phase_ids[present]).tolist()) - set(self.phases)
        if missing:
            raise GrainMapError(
                f"phase_ids use phase(s) {sorted(missing)} that are not in phases "
                f"(keys {sorted(self.phases)})"
            )
        bad = ~np.all(np.isfinite(self.orientations[present]), axis=(1, 2))
        if bad.any():
            raise GrainMapError(
                f"orientations: grain(s) {present[bad][:10].tolist()} have no orientation"
            )
        mats = self.orientations[present]
        not_rotation = (np.abs(mats @ np.swapaxes(mats, 1, 2) - np.eye(3)).max(axis=(1, 2)) > 1e-4
                        ) | (np.linalg.det(mats) < 0) if len(mats) else np.zeros(0, bool)
        if not_rotation.any():
            raise GrainMapError(
                f"orientations: grain(s) {present[not_rotation][:10].tolist()} are not proper "
                "rotation matrices (U must be orthonormal with determinant +1)"
            )
        for name in ("completeness", "mask"):
            volume = getattr(self, name)
            if volume is not None and np.shape(volume) != self.grain_ids.shape:
                raise GrainMapError(
                    f"{name} has shape {np.shape(volume)}, expected {self.grain_ids.shape}"
                )

    # ---- construction

    @classmethod
    def from_grain_ids(
        cls,
        grain_ids: np.ndarray,
        spacing: Sequence[float] | float,
        orientations: Mapping[int, np.ndarray] | np.ndarray,
        phase_ids: Mapping[int, int] | np.ndarray | int = 1,
        phases: Sequence[Phase | Mapping[str, Any]] | Mapping[int, Phase] = (ALUMINIUM,),
        center: Sequence[float] = (0.0, 0.0, 0.0),
        completeness: np.ndarray | None = None,
        mask: np.ndarray | None = None,
    ) -> GrainMap:
        """Build a grain map from a labelled volume and per-grain tables.

        Parameters
        ----------
        grain_ids : ndarray of int, shape (Z, Y, X)
            Grain id per voxel; 0 = no grain.
        spacing : float or 3 floats
            Voxel size in mm, (z, y, x).
        orientations : dict {grain_id: (3, 3)} or ndarray (>= max_id + 1, 3, 3)
            Orientation matrices ``U`` (crystal -> sample). Use :func:`bunge_to_matrix` for
            Bunge angles.
        phase_ids : int, dict or ndarray
            Phase of each grain (a key of ``phases``); one int for a single-phase map.
        phases : sequence of Phase/dict (phase ids 1, 2, ...) or dict {phase_id: Phase}
            Default: aluminium.
        center : 3 floats
            Centre of the volume in mm, (z, y, x).
        completeness, mask : ndarray (Z, Y, X), optional
            Per-voxel completeness and sample mask.

        Returns
        -------
        GrainMap
        """
        ids = np.asarray(grain_ids)
        n_rows = int(ids.max(initial=0)) + 1
        if not isinstance(phases, Mapping):
            phases = {k + 1: p for k, p in enumerate(phases)}
        return cls(
            grain_ids=ids,
            spacing=spacing,  # type: ignore[arg-type]
            orientations=_per_grain_table(orientations, n_rows, (3, 3), float, "orientations",
                                          np.nan),
            phase_ids=_per_grain_table(phase_ids, n_rows, (), np.int64, "phase_ids", 0),
            phases=dict(phases),
            center=center,  # type: ignore[arg-type]
            completeness=completeness,
            mask=mask,
        )

    # ---- geometry and per-grain properties

    @property
    def shape(self) -> tuple[int, int, int]:
        """Volume shape (Z, Y, X)."""
        return self.grain_ids.shape  # type: ignore[return-value]

    @property
    def grain_list(self) -> np.ndarray:
        """Ids of the grains present in the volume, ascending."""
        counts = np.bincount(self.grain_ids.ravel())
        return np.flatnonzero(counts[1:]) + 1

    @property
    def n_grains(self) -> int:
        """Number of grains present in the volume."""
        return int(self.grain_list.size)

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel in mm³."""
        return float(np.prod(self.spacing))

    @property
    def extent(self) -> tuple[float, float, float]:
        """Size of the volume's bounding box in mm, (z, y, x)."""
        return tuple(float(s * n) for s, n in zip(self.spacing, self.shape))  # type: ignore

    @property
    def origin(self) -> np.ndarray:
        """Position in mm (z, y, x) of the centre of voxel (0, 0, 0)."""
        return np.asarray(self.center) - (np.asarray(self.shape) - 1) / 2 * np.asarray(self.spacing)

    def voxel_counts(self) -> np.ndarray:
        """Voxels per grain id, indexed by grain id (length max_id + 1)."""
        return np.bincount(self.grain_ids.ravel(), minlength=self.orientations.shape[0])

    def equivalent_diameters(self) -> np.ndarray:
        """Equivalent spherical diameter in mm per grain id (0 for absent ids)."""
        volume = self.voxel_counts() * self.voxel_volume
        return np.cbrt(6.0 * volume / np.pi)

    def euler_deg(self) -> np.ndarray:
        """Bunge angles (degrees) per grain id; NaN rows for ids without orientation."""
        out = np.full((len(self.orientations), 3), np.nan)
        ok = np.all(np.isfinite(self.orientations), axis=(1, 2))
        out[ok] = matrix_to_bunge(self.orientations[ok])
        return out

    def orix_orientations(self, grain_ids: np.ndarray | None = None):
        """Orientations of the given grains (default: all present) as orix objects.

        orix stores the passive rotation (sample -> crystal), the transpose of ``U``; the
        symmetry is the proper point group of the first grain's phase, so the grains must
        share a phase.
        """
        from orix.quaternion import Orientation

        ids = self.grain_list if grain_ids is None else np.asarray(grain_ids)
        phase_set = np.unique(self.phase_ids[ids])
        if len(phase_set) > 1:
            raise GrainMapError(f"grains of several phases {phase_set.tolist()}: pass one phase")
        symmetry = self.phases[int(phase_set[0])].point_group if len(phase_set) else None
        mats = np.swapaxes(self.orientations[ids], -1, -2)
        return Orientation.from_matrix(mats, symmetry=symmetry)

    def copy(self, **changes: Any) -> GrainMap:
        """A copy with deep-copied arrays and the given fields replaced."""
        fields = {
            "grain_ids": self.grain_ids.copy(),
            "orientations": self.orientations.copy(),
            "phase_ids": self.phase_ids.copy(),
            "phases": dict(self.phases),
            "completeness": None if self.completeness is None else self.completeness.copy(),
            "mask": None if self.mask is None else self.mask.copy(),
            "metadata": dict(self.metadata),
        }
        fields.update(changes)
        return replace(self, **fields)


# --------------------------------------------------------------------------- writing


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
    tmp = path.with_name(f".{path.name}.partial")
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
    try:
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
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("wrote %s: %d grains, %s voxels", path, gm.n_grains, ids.shape)
    return path


def _package_version() -> str:
    from labdct_live import __version__

    return __version__


# --------------------------------------------------------------------------- reading


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


def read_grainrecon(path: str | os.PathLike) -> GrainMap:
    """Read GrainRecon's output: the GrainMapper3D layout with Euler angles in degrees.

    The Euler angles are used when present (Rodrigues otherwise).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grain-map file {path} does not exist")
    with h5py.File(path, "r") as f:
        has_euler = f"{_DATA}/EulerZXZ" in f
    gm = read_gm3d(path, euler_unit="deg", prefer="euler" if has_euler else "auto")
    gm.metadata["format"] = "grainrecon"
    return gm


# DREAM.3D CrystalStructures enumeration -> a representative space group.
_DREAM3D_LAUE_TO_SPACE_GROUP = {0: 194, 1: 225, 2: 191, 3: 200, 4: 221, 5: 2, 6: 12,
                                7: 47, 8: 83, 9: 123, 10: 147, 11: 166}


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


def read_grainmap(path: str | os.PathLike, fmt: str = "auto") -> GrainMap:
    """Read a grain map in any supported format.

    Parameters
    ----------
    path : path-like
        GrainMapper3D / GrainRecon ``.h5`` or DREAM.3D ``.dream3d`` file.
    fmt : {"auto", "gm3d", "grainrecon", "dream3d"}
        "auto" picks DREAM.3D when the file has ``/DataContainers``, GrainMapper3D otherwise
        (GrainRecon files cannot be told apart: pass "grainrecon").
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grain-map file {path} does not exist")
    if fmt == "auto":
        with h5py.File(path, "r") as f:
            fmt = "dream3d" if "DataContainers" in f else "gm3d"
    readers = {"gm3d": read_gm3d, "grainrecon": read_grainrecon, "dream3d": read_dream3d}
    if fmt not in readers:
        raise GrainMapError(f"fmt={fmt!r}: use one of auto, {', '.join(readers)}")
    return readers[fmt](path)
