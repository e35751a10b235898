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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from labdct_live.grains.orientations import matrix_to_bunge
from labdct_live.grains.phase import ALUMINIUM, GrainMapError, Phase

__all__ = [
    "GrainMap",
]


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
