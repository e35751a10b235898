"""Acquisition geometry of a LabDCT set-up (Laue focusing) and detector coordinates.

Lab frame (docs/physics.md §1): x along the beam, z vertical (the rotation axis), y completing a
right-handed frame. The point source is at ``(-lss, 0, 0)``, the rotation axis passes through
the origin and the untilted detector plane is ``x = lsd``.

Detector pixels are addressed ``(row, col)`` as the detector delivers its frames. Looking
from the source along +x with z up, +y points to the *left*; the image's columns grow to the
right and its rows grow downwards. Hence, for an untilted detector with no offset::

    y = -(col - center_col) * pixel_size
    z = -(row - center_row) * pixel_size

This is the only place the flip is made; everything else converts through
:meth:`Geometry.lab_to_pixel` and :meth:`Geometry.pixel_to_lab`.

The azimuth ``eta`` of a diffracted ray is measured on the detector from "up" (+z, row
decreasing) towards the image's right (-y, col increasing): ``eta = atan2(-k_y, k_z)``.

Lengths are in mm and angles in degrees in every API and file; radians only inside the math.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

__all__ = [
    "NO_BEAMSTOP",
    "Geometry",
    "GeometryError",
    "PAPER_PIXEL_SIZE_MM",
    "rotation_matrix_z",
    "tilt_matrix",
]

#: Pixel size of the paper's detector (2032 x 2032 pixels of 3.3623 µm).
PAPER_PIXEL_SIZE_MM = 3.3623e-3

#: Beam-stop shadow of the paper's training simulation at Lsd = 11 mm, in detector pixels
#: (inclusive bounds): rows 536-1488, columns 545-1506 (docs/physics.md §1).
_PAPER_BEAMSTOP_ROWS = (536, 1488)
_PAPER_BEAMSTOP_COLS = (545, 1506)
_PAPER_LSD_MM = 11.0

#: The ``beamstop`` of a geometry without beam stop (an empty pixel range).
NO_BEAMSTOP = (0, -1, 0, -1)


class GeometryError(ValueError):
    """An acquisition geometry that cannot be simulated; the message names the parameter."""


def rotation_matrix_z(omega_deg: float | np.ndarray) -> np.ndarray:
    """Sample rotation ``Omega(w) = Rz(w)`` about the vertical axis.

    Parameters
    ----------
    omega_deg : float or ndarray
        Rotation angle(s) in degrees.

    Returns
    -------
    ndarray
        ``(3, 3)`` matrix, or ``(..., 3, 3)`` for an array of angles.
    """
    w = np.deg2rad(np.asarray(omega_deg, dtype=float))
    c, s = np.cos(w), np.sin(w)
    out = np.zeros(w.shape + (3, 3))
    out[..., 0, 0] = c
    out[..., 0, 1] = -s
    out[..., 1, 0] = s
    out[..., 1, 1] = c
    out[..., 2, 2] = 1.0
    return out


def tilt_matrix(tilt_deg: tuple[float, float, float]) -> np.ndarray:
    """Detector tilt ``Rx(a) @ Ry(b) @ Rz(c)`` for ``tilt_deg = (a, b, c)`` in degrees."""
    a, b, c = np.deg2rad(tilt_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


@dataclass(frozen=True)
class Geometry:
    """Source, sample and detector of a LabDCT acquisition.

    Defaults are the seed paper's training geometry: Lss = Lsd = 11 mm, a 2032 x 2032
    detector of 3.3623 µm pixels centred on the beam, 181 projections from -180° to +180°.

    Parameters
    ----------
    lss : float
        Source-to-rotation-axis distance (mm).
    lsd : float
        Rotation-axis-to-detector distance (mm).
    detector_shape : (int, int)
        Detector size in pixels, ``(rows, cols)``.
    pixel_size : float
        Pixel pitch (mm).
    center : (float, float) or None
        Pixel ``(row, col)`` where the direct beam (the x axis) meets the untilted detector;
        the detector's middle when None.
    tilt : (float, float, float)
        Detector rotation ``Rx @ Ry @ Rz`` about its centre, degrees.
    offset : (float, float)
        ``(y, z)`` shift of the detector centre in the detector plane (mm).
    beamstop : (int, int, int, int) or None
        Beam-stop shadow ``(row_min, row_max, col_min, col_max)`` in pixels, inclusive; the
        paper's shadow scaled to this ``lsd`` and centred on ``center`` when None.
        :data:`NO_BEAMSTOP` ``(0, -1, 0, -1)`` means no beam stop.
    omega_start, omega_step : float
        First rotation angle and step (degrees).
    n_projections : int
        Number of projections.
    kvp : float
        Tube voltage of the W-anode source (kV).
    """

    lss: float = 11.0
    lsd: float = 11.0
    detector_shape: tuple[int, int] = (2032, 2032)
    pixel_size: float = PAPER_PIXEL_SIZE_MM
    center: tuple[float, float] | None = None
    tilt: tuple[float, float, float] = (0.0, 0.0, 0.0)
    offset: tuple[float, float] = (0.0, 0.0)
    beamstop: tuple[int, int, int, int] | None = None
    omega_start: float = -180.0
    omega_step: float = 2.0
    n_projections: int = 181
    kvp: float = 140.0
    _R: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("lss", "lsd", "pixel_size"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise GeometryError(f"{name} must be a positive distance in mm, got {value!r}")
        rows, cols = (int(v) for v in self.detector_shape)
        if rows < 1 or cols < 1:
            raise GeometryError(f"detector_shape must be positive, got {self.detector_shape!r}")
        object.__setattr__(self, "detector_shape", (rows, cols))
        if int(self.n_projections) < 1:
            raise GeometryError(f"n_projections must be at least 1, got {self.n_projections!r}")
        object.__setattr__(self, "n_projections", int(self.n_projections))
        if not (np.isfinite(self.kvp) and self.kvp > 20):
            raise GeometryError(f"kvp must be a tube voltage above 20 kV, got {self.kvp!r}")
        if not np.isfinite(self.omega_step) or (self.n_projections > 1 and self.omega_step == 0):
            raise GeometryError(f"omega_step must be finite and non-zero, got {self.omega_step!r}")
        if self.center is None:
            object.__setattr__(self, "center", ((rows - 1) / 2.0, (cols - 1) / 2.0))
        object.__setattr__(self, "center", tuple(float(v) for v in self.center))
        object.__setattr__(self, "tilt", tuple(float(v) for v in self.tilt))
        object.__setattr__(self, "offset", tuple(float(v) for v in self.offset))
        if self.beamstop is None:
            object.__setattr__(self, "beamstop", self._scaled_paper_beamstop())
        bs = tuple(int(v) for v in self.beamstop)
        if len(bs) != 4:
            raise GeometryError(f"beamstop must be (row_min, row_max, col_min, col_max), got {bs}")
        object.__setattr__(self, "beamstop", bs)
        if self.has_beamstop:
            r0, r1, c0, c1 = bs
            if r0 <= 0 and r1 >= rows - 1 and c0 <= 0 and c1 >= cols - 1:
                raise GeometryError(
                    f"beamstop {bs} covers the whole {rows}x{cols} detector: the detector must "
                    "be larger than the beam stop"
                )
        object.__setattr__(self, "_R", tilt_matrix(self.tilt))

    def _scaled_paper_beamstop(self) -> tuple[int, int, int, int]:
        """The paper's shadow, same angular size (scaled by lsd / 11 mm, pixel size), centred."""
        scale = (self.lsd / _PAPER_LSD_MM) * (PAPER_PIXEL_SIZE_MM / self.pixel_size)
        paper_center = 1015.5
        rc, cc = self.center
        r0, r1 = (paper_center + (v - paper_center) * scale + (rc - paper_center)
                  for v in _PAPER_BEAMSTOP_ROWS)
        c0, c1 = (paper_center + (v - paper_center) * scale + (cc - paper_center)
                  for v in _PAPER_BEAMSTOP_COLS)
        return (int(round(r0)), int(round(r1)), int(round(c0)), int(round(c1)))

    # ------------------------------------------------------------------ derived quantities
    @property
    def source(self) -> np.ndarray:
        """Source position in the lab frame (mm)."""
        return np.array([-self.lss, 0.0, 0.0])

    @property
    def has_beamstop(self) -> bool:
        r0, r1, c0, c1 = self.beamstop
        return r1 >= r0 and c1 >= c0

    @property
    def detector_origin(self) -> np.ndarray:
        """Lab position of the detector centre pixel (mm)."""
        return np.array([self.lsd, self.offset[0], self.offset[1]])

    @property
    def detector_normal(self) -> np.ndarray:
        """Unit normal of the detector plane, pointing away from the sample."""
        return self._R[:, 0].copy()

    @property
    def omegas(self) -> np.ndarray:
        """Rotation angle of every projection (degrees)."""
        return self.omega_start + self.omega_step * np.arange(self.n_projections)

    def binned(self, detector_shape: tuple[int, int]) -> Geometry:
        """The same field of view seen by a detector with fewer (or more) pixels.

        The pixel size grows by the binning factor; the beam centre and the beam-stop shadow
        are rescaled (the shadow to the pixels it covers at least partly). Small detectors
        make frames that take milliseconds, for tests and quick demonstrations; a real
        detector read out binned 2x2 is ``geometry.binned((rows // 2, cols // 2))``.

        Parameters
        ----------
        detector_shape : (int, int)
            New ``(rows, cols)``; must keep the aspect ratio.

        Examples
        --------
        >>> g = Geometry().binned((256, 256))
        >>> round(g.pixel_size / Geometry().pixel_size, 4), g.beamstop
        (7.9375, (67, 187, 68, 189))
        """
        rows, cols = self.detector_shape
        new_rows, new_cols = (int(v) for v in detector_shape)
        if new_rows < 8 or new_cols < 8:
            raise GeometryError(
                f"detector_shape must be at least 8 x 8 pixels, got {detector_shape!r}")
        factor = rows / new_rows
        if not math.isclose(factor, cols / new_cols, rel_tol=1e-9):
            raise GeometryError(
                f"detector_shape {detector_shape!r} changes the aspect ratio of "
                f"{self.detector_shape}: scale rows and columns by the same factor")
        rc, cc = self.center
        center = ((rc + 0.5) / factor - 0.5, (cc + 0.5) / factor - 0.5)
        beamstop = NO_BEAMSTOP
        if self.has_beamstop:
            r0, r1, c0, c1 = self.beamstop
            beamstop = (math.floor(r0 / factor), math.ceil((r1 + 1) / factor) - 1,
                        math.floor(c0 / factor), math.ceil((c1 + 1) / factor) - 1)
        return self.with_(detector_shape=(new_rows, new_cols),
                          pixel_size=self.pixel_size * factor, center=center,
                          beamstop=beamstop)

    def with_(self, **changes) -> Geometry:
        """A copy with some fields changed (the beam stop is re-derived unless given)."""
        if "beamstop" not in changes and self.beamstop == self._scaled_paper_beamstop():
            changes["beamstop"] = None
        if "center" not in changes and self.center == tuple(
            (n - 1) / 2.0 for n in self.detector_shape
        ):
            changes["center"] = None
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain-python description, for metadata and files (mm, degrees); the inverse of
        :meth:`from_dict`."""
        d = asdict(self)
        d.pop("_R", None)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> Geometry:
        """The geometry :meth:`to_dict` described (lists back to tuples).

        Raises
        ------
        GeometryError
            For keys :meth:`to_dict` does not write, or values out of range.

        Examples
        --------
        >>> g = Geometry()
        >>> Geometry.from_dict(g.to_dict()) == g
        True
        """
        allowed = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise GeometryError(f"unknown key(s) {unknown}; a geometry has those of "
                                f"Geometry.to_dict(): {sorted(allowed)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    # ----------------------------------------------------------------------- conversions
    def pixel_to_lab(self, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        """Lab coordinates (mm) of detector pixel positions; shape ``row.shape + (3,)``."""
        row = np.asarray(row, dtype=float)
        col = np.asarray(col, dtype=float)
        rc, cc = self.center
        local = np.stack(
            [np.zeros_like(row), -(col - cc) * self.pixel_size, -(row - rc) * self.pixel_size],
            axis=-1,
        )
        return self.detector_origin + local @ self._R.T

    def lab_to_pixel(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project lab points lying in the detector plane to fractional ``(row, col)``."""
        local = (np.asarray(points, dtype=float) - self.detector_origin) @ self._R
        rc, cc = self.center
        return rc - local[..., 2] / self.pixel_size, cc - local[..., 1] / self.pixel_size

    def intersect(self, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """Where rays ``origin + t * direction`` (t > 0) meet the detector plane (mm).

        Rays parallel to or pointing away from the plane give NaN.
        """
        n = self.detector_normal
        denom = directions @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((self.detector_origin - origins) @ n) / denom
        t = np.where((denom > 0) & (t > 0), t, np.nan)
        return origins + t[..., None] * directions

    def in_beamstop(self, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        """True where (rounded) pixel positions fall in the beam-stop shadow."""
        if not self.has_beamstop:
            return np.zeros(np.shape(row), dtype=bool)
        r0, r1, c0, c1 = self.beamstop
        r = np.rint(row)
        c = np.rint(col)
        return (r >= r0) & (r <= r1) & (c >= c0) & (c <= c1)

    def beamstop_mask(self) -> np.ndarray:
        """Boolean ``detector_shape`` image, True in the beam-stop shadow."""
        mask = np.zeros(self.detector_shape, dtype=bool)
        if self.has_beamstop:
            r0, r1, c0, c1 = self.beamstop
            mask[max(r0, 0): r1 + 1, max(c0, 0): c1 + 1] = True
        return mask

    def max_two_theta(self) -> float:
        """Largest scattering angle (degrees) that reaches a detector corner from the origin."""
        rows, cols = self.detector_shape
        corners = self.pixel_to_lab(np.array([0, 0, rows - 1, rows - 1]),
                                    np.array([0, cols - 1, 0, cols - 1]))
        cos2t = corners[:, 0] / np.linalg.norm(corners, axis=1)
        return float(np.rad2deg(np.arccos(cos2t.min())))
