"""Instrument metadata file: the geometry of a folder of real frames, stated once.

A small YAML (``.yaml``/``.yml``) or JSON (``.json``) file describes the instrument that
recorded a folder of frames, in the units and words of a beamline logbook; it maps onto the
package's :class:`~labdct_live.simulation.geometry.Geometry` plus the list of rotation angles and
the material. Example (``docs/examples/iron_ff_labdct.yaml``)::

    format: labdct-live instrument
    version: 1
    name: pure iron, far-field LabDCT
    distances:
      source_sample_mm: 100.0        # source to rotation axis
      sample_detector_mm: 100.0      # rotation axis to detector
    detector:
      shape: [1024, 1024]            # rows, cols of the frames AS STORED (after binning)
      pixel_size_mm: 0.034167        # physical pitch of one unbinned pixel
      binning: 2                     # frame pixel = binning x binning physical pixels
      beam_center: [511.77, 512.23]  # (row, col) of the direct beam, frame pixels, 0-based
      beamstop: [419, 609, 419, 609] # row_min, row_max, col_min, col_max, inclusive, or none
      tilt_deg: [0, 0, 0]            # optional, Geometry.tilt
      offset_mm: [0, 0]              # optional, Geometry.offset
    rotation:                        # either start/step/count or an explicit list
      omega_start_deg: 180.0
      omega_step_deg: -3.0
      n_frames: 121
      # omegas_deg: [180.0, 177.0, ...]
    source:
      tube_voltage_kv: 150
    sample:
      material: Fe                   # a name of labdct_live.simulation.crystal.MATERIALS
      radius_mm: 0.5                 # optional: bounds the Friedel-mate shift

Every pixel coordinate (beam centre, beam stop) is in the pixels of the stored frames,
0-based, ``(row, col)`` as :mod:`labdct_live.simulation.geometry` addresses them; converting from
1-based unbinned coordinates ``u`` (MATLAB codes): ``(u - 1 - (binning - 1) / 2) / binning``.

:func:`load_instrument` reads a file into an :class:`Instrument`; :meth:`Instrument.to_file`
writes one back. Errors are :class:`InstrumentFileError` naming the field
(``detector.beam_center: ...``). :func:`add_instrument_option` and
:func:`instrument_from_args` give command-line tools the ``--instrument FILE`` option.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from labdct_live.simulation.geometry import Geometry, GeometryError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Instrument",
    "InstrumentFileError",
    "load_instrument",
    "omegas_are_uniform",
]


#: ``format`` value of an instrument file.
FORMAT_NAME = "labdct-live instrument"

#: ``version`` this module reads and writes.
FORMAT_VERSION = 1

_SECTIONS = {
    "format": None, "version": None, "name": None, "notes": None, "frames": None,
    "distances": {"source_sample_mm", "sample_detector_mm"},
    "detector": {"shape", "pixel_size_mm", "binning", "beam_center", "beamstop", "tilt_deg",
                 "offset_mm"},
    "rotation": {"omega_start_deg", "omega_step_deg", "n_frames", "omegas_deg"},
    "source": {"tube_voltage_kv"},
    "sample": {"material", "radius_mm", "height_mm"},
}


class InstrumentFileError(ValueError):
    """An instrument file that cannot be read; the message names the file and the field."""


def omegas_are_uniform(omegas: np.ndarray, tol: float = 1e-6) -> bool:
    """True when ``omegas`` (degrees) are equally spaced (one or two values always are)."""
    omegas = np.asarray(omegas, dtype=float)
    if len(omegas) < 3:
        return True
    steps = np.diff(omegas)
    return bool(np.all(np.abs(steps - steps[0]) <= tol))


@dataclass(frozen=True)
class Instrument:
    """A real instrument: geometry, rotation angles, material and what the frames are.

    Attributes
    ----------
    geometry : Geometry
        Distances, detector (stored-frame pixels: ``pixel_size`` is the binned pitch), beam
        centre (``center``), beam stop, tilt, offset, tube voltage; ``omega_start``,
        ``omega_step`` and ``n_projections`` agree with ``omegas`` when those are uniform.
    omegas : ndarray
        Rotation angle of every frame, degrees, in frame order.
    material : str
        Material name (:data:`labdct_live.simulation.crystal.MATERIALS`).
    binning : int
        Physical pixels per stored pixel along each axis.
    name : str
        A label for reports.
    sample_radius_mm, sample_height_mm : float or None
        Extent of the illuminated sample, if known (bounds the Friedel-mate shift).
    frames : dict
        Free-form description of the frame files (e.g. ``pattern``), kept as written.
    notes : str
        Free text (provenance of the numbers).
    """

    geometry: Geometry
    omegas: np.ndarray
    material: str = "Fe"
    binning: int = 1
    name: str = ""
    sample_radius_mm: float | None = None
    sample_height_mm: float | None = None
    frames: dict = field(default_factory=dict)
    notes: str = ""

    def __post_init__(self) -> None:
        omegas = np.asarray(self.omegas, dtype=float).ravel()
        if len(omegas) < 1 or not np.all(np.isfinite(omegas)):
            raise InstrumentFileError("omegas must be a non-empty list of finite angles")
        object.__setattr__(self, "omegas", omegas)
        if int(self.binning) < 1:
            raise InstrumentFileError(f"binning must be >= 1, got {self.binning!r}")
        # the geometry's omega fields describe the same angles (a placeholder step when the
        # angles are not uniform: use ``omegas``)
        uniform = omegas_are_uniform(omegas) and len(omegas) >= 2
        step = float(omegas[1] - omegas[0]) if uniform else 1.0
        g = self.geometry
        if (g.omega_start, g.omega_step, g.n_projections) != (float(omegas[0]), step,
                                                              len(omegas)):
            object.__setattr__(self, "geometry", replace(
                g, omega_start=float(omegas[0]), omega_step=step, n_projections=len(omegas)))

    @property
    def beamstop(self) -> tuple[int, int, int, int] | None:
        """Beam-stop rectangle in frame pixels (inclusive), or None without one."""
        return self.geometry.beamstop if self.geometry.has_beamstop else None

    @property
    def beam_center(self) -> tuple[float, float]:
        """Frame pixel ``(row, col)`` of the direct beam."""
        from labdct_live.simulation.background import beam_center_pixel

        return beam_center_pixel(self.geometry)

    def beamstop_mask(self) -> np.ndarray | None:
        """Boolean frame-shaped image, True in the beam-stop shadow; None without one."""
        return self.geometry.beamstop_mask() if self.geometry.has_beamstop else None

    def to_dict(self) -> dict[str, Any]:
        """The file's content as plain python (the inverse of :func:`instrument_from_dict`)."""
        g = self.geometry
        rotation: dict[str, Any]
        if omegas_are_uniform(self.omegas) and len(self.omegas) >= 2:
            rotation = {"omega_start_deg": float(self.omegas[0]),
                        "omega_step_deg": float(self.omegas[1] - self.omegas[0]),
                        "n_frames": len(self.omegas)}
        else:
            rotation = {"omegas_deg": [float(w) for w in self.omegas]}
        d: dict[str, Any] = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "name": self.name,
            "distances": {"source_sample_mm": g.lss, "sample_detector_mm": g.lsd},
            "detector": {
                "shape": list(g.detector_shape),
                "pixel_size_mm": g.pixel_size / self.binning,
                "binning": self.binning,
                "beam_center": list(g.center),
                "beamstop": list(g.beamstop) if g.has_beamstop else "none",
                "tilt_deg": list(g.tilt),
                "offset_mm": list(g.offset),
            },
            "rotation": rotation,
            "source": {"tube_voltage_kv": g.kvp},
            "sample": {"material": self.material},
        }
        if self.sample_radius_mm is not None:
            d["sample"]["radius_mm"] = self.sample_radius_mm
        if self.sample_height_mm is not None:
            d["sample"]["height_mm"] = self.sample_height_mm
        if self.frames:
            d["frames"] = dict(self.frames)
        if self.notes:
            d["notes"] = self.notes
        return d

    def to_file(self, path: str | os.PathLike) -> Path:
        """Write the instrument as YAML (``.yaml``, ``.yml``) or JSON (``.json``).

        Returns
        -------
        Path
            The file written.
        """
        path = Path(path)
        d = self.to_dict()
        if path.suffix.lower() == ".json":
            text = json.dumps(d, indent=2) + "\n"
        elif path.suffix.lower() in (".yaml", ".yml"):
            yaml = _yaml(path)
            text = yaml.safe_dump(d, sort_keys=False, default_flow_style=None)
        else:
            raise InstrumentFileError(f"{path}: an instrument file ends in .yaml, .yml or "
                                      f".json, got {path.suffix!r}")
        path.write_text(text)
        return path


def _yaml(path: Path):
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML comes with the dependencies (tiled)
        raise InstrumentFileError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); "
                                  "or write the file as JSON") from None
    return yaml


def _number(d: Mapping, key: str, where: str, *, positive: bool = False,
            required: bool = True, default: float | None = None) -> float | None:
    if key not in d or d[key] is None:
        if required:
            raise InstrumentFileError(f"{where}.{key} is missing")
        return default
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InstrumentFileError(f"{where}.{key} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        raise InstrumentFileError(
            f"{where}.{key} must be a {'positive' if positive else 'finite'} number, "
            f"got {value!r}")
    return value


def _numbers(d: Mapping, key: str, where: str, n: int, *, integer: bool = False,
             required: bool = True, default=None):
    if key not in d or d[key] is None:
        if required:
            raise InstrumentFileError(f"{where}.{key} is missing")
        return default
    value = d[key]
    if (not isinstance(value, (list, tuple)) or len(value) != n
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)):
        raise InstrumentFileError(f"{where}.{key} must be a list of {n} numbers, got {value!r}")
    if integer and any(float(v) != int(v) for v in value):
        raise InstrumentFileError(f"{where}.{key} must hold whole numbers (pixels), "
                                  f"got {value!r}")
    if any(not math.isfinite(float(v)) for v in value):
        raise InstrumentFileError(f"{where}.{key} must be finite, got {value!r}")
    return tuple(int(v) if integer else float(v) for v in value)


def _section(d: Mapping, name: str, source: str, required: bool = True) -> Mapping:
    if name not in d or d[name] is None:
        if required:
            raise InstrumentFileError(f"{source}: section {name!r} is missing")
        return {}
    section = d[name]
    if not isinstance(section, Mapping):
        raise InstrumentFileError(f"{source}: {name} must be a mapping of fields, "
                                  f"got {section!r}")
    unknown = sorted(set(section) - _SECTIONS[name])
    if unknown:
        raise InstrumentFileError(f"{source}: unknown field(s) {[f'{name}.{k}' for k in unknown]}"
                                  f"; {name} has {sorted(_SECTIONS[name])}")
    return section


def _omegas(rot: Mapping, where: str) -> np.ndarray:
    if "omegas_deg" in rot:
        if any(k in rot for k in ("omega_start_deg", "omega_step_deg", "n_frames")):
            raise InstrumentFileError(f"{where}: give either rotation.omegas_deg or "
                                      "omega_start_deg/omega_step_deg/n_frames, not both")
        values = rot["omegas_deg"]
        if (not isinstance(values, (list, tuple)) or not values
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values)):
            raise InstrumentFileError(f"{where}.omegas_deg must be a non-empty list of "
                                      "numbers (degrees)")
        omegas = np.asarray(values, dtype=float)
        if not np.all(np.isfinite(omegas)):
            raise InstrumentFileError(f"{where}.omegas_deg must be finite")
        return omegas
    start = _number(rot, "omega_start_deg", where)
    step = _number(rot, "omega_step_deg", where)
    n = rot.get("n_frames")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InstrumentFileError(f"{where}.n_frames must be a whole number >= 1, got {n!r}")
    if step == 0 and n > 1:
        raise InstrumentFileError(f"{where}.omega_step_deg must not be 0")
    return start + step * np.arange(n)


def instrument_from_dict(d: Mapping, source: str = "instrument") -> Instrument:
    """The :class:`Instrument` a file's parsed content describes.

    Parameters
    ----------
    d : Mapping
        Parsed YAML/JSON (the layout of the module docstring).
    source : str
        Named in error messages (the file's path).

    Raises
    ------
    InstrumentFileError
        Naming the missing, unknown or out-of-range field.
    """
    if not isinstance(d, Mapping):
        raise InstrumentFileError(f"{source}: an instrument file is a mapping of sections, "
                                  f"got {type(d).__name__}")
    unknown = sorted(set(d) - set(_SECTIONS))
    if unknown:
        raise InstrumentFileError(f"{source}: unknown section(s) {unknown}; an instrument file "
                                  f"has {sorted(_SECTIONS)}")
    if d.get("format", FORMAT_NAME) != FORMAT_NAME:
        raise InstrumentFileError(f"{source}: format must be {FORMAT_NAME!r}, "
                                  f"got {d.get('format')!r}")
    if d.get("version", FORMAT_VERSION) != FORMAT_VERSION:
        raise InstrumentFileError(f"{source}: version {d.get('version')!r} is not supported "
                                  f"(this labdct-live reads version {FORMAT_VERSION})")
    dist = _section(d, "distances", source)
    det = _section(d, "detector", source)
    rot = _section(d, "rotation", source)
    src = _section(d, "source", source, required=False)
    smp = _section(d, "sample", source, required=False)

    lss = _number(dist, "source_sample_mm", "distances", positive=True)
    lsd = _number(dist, "sample_detector_mm", "distances", positive=True)
    shape = _numbers(det, "shape", "detector", 2, integer=True)
    if min(shape) < 1:
        raise InstrumentFileError(f"detector.shape must be positive, got {list(shape)}")
    pitch = _number(det, "pixel_size_mm", "detector", positive=True)
    binning = det.get("binning", 1)
    if isinstance(binning, bool) or not isinstance(binning, int) or binning < 1:
        raise InstrumentFileError(f"detector.binning must be a whole number >= 1, "
                                  f"got {binning!r}")
    center = _numbers(det, "beam_center", "detector", 2, required=False)
    if center is not None and not (-0.5 <= center[0] <= shape[0] - 0.5
                                   and -0.5 <= center[1] <= shape[1] - 0.5):
        raise InstrumentFileError(
            f"detector.beam_center {list(center)} lies outside the {shape[0]}x{shape[1]} "
            "frames (row, col in frame pixels, 0-based)")
    raw_bs = det.get("beamstop", "none")
    if raw_bs is None or (isinstance(raw_bs, str) and raw_bs.lower() == "none"):
        beamstop = (0, -1, 0, -1)
    else:
        beamstop = _numbers(det, "beamstop", "detector", 4, integer=True)
        r0, r1, c0, c1 = beamstop
        if not (0 <= r0 <= r1 < shape[0] and 0 <= c0 <= c1 < shape[1]):
            raise InstrumentFileError(
                f"detector.beamstop {list(beamstop)} must be row_min <= row_max and "
                f"col_min <= col_max inside the {shape[0]}x{shape[1]} frames (inclusive, "
                "0-based), or 'none'")
    tilt = _numbers(det, "tilt_deg", "detector", 3, required=False, default=(0.0, 0.0, 0.0))
    offset = _numbers(det, "offset_mm", "detector", 2, required=False, default=(0.0, 0.0))
    omegas = _omegas(rot, "rotation")
    kvp = _number(src, "tube_voltage_kv", "source", required=False, default=140.0)
    material = smp.get("material", "Fe")
    from labdct_live.simulation.crystal import MATERIALS

    if material not in MATERIALS:
        raise InstrumentFileError(f"sample.material {material!r} is not known; choose one of "
                                  f"{sorted(MATERIALS)}")
    radius = _number(smp, "radius_mm", "sample", positive=True, required=False)
    height = _number(smp, "height_mm", "sample", positive=True, required=False)
    uniform = omegas_are_uniform(omegas) and len(omegas) >= 2
    try:
        geometry = Geometry(
            lss=lss, lsd=lsd, detector_shape=shape, pixel_size=pitch * binning, center=center,
            tilt=tilt, offset=offset, beamstop=beamstop,
            omega_start=float(omegas[0]),
            omega_step=float(omegas[1] - omegas[0]) if uniform else 1.0,
            n_projections=len(omegas), kvp=kvp)
    except GeometryError as exc:
        raise InstrumentFileError(f"{source}: {exc}") from None
    frames = d.get("frames") or {}
    if not isinstance(frames, Mapping):
        raise InstrumentFileError(f"{source}: frames must be a mapping, got {frames!r}")
    return Instrument(geometry=geometry, omegas=omegas, material=material, binning=binning,
                      name=str(d.get("name") or ""), sample_radius_mm=radius,
                      sample_height_mm=height, frames=dict(frames),
                      notes=str(d.get("notes") or ""))


def load_instrument(path: str | os.PathLike) -> Instrument:
    """Read an instrument file (YAML or JSON, see the module docstring).

    Parameters
    ----------
    path : path-like
        ``.yaml``, ``.yml`` or ``.json``.

    Returns
    -------
    Instrument

    Raises
    ------
    InstrumentFileError
        When the file is missing, unparsable or a field is wrong (the message names it).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> inst = Instrument(Geometry(lss=100, lsd=100, detector_shape=(64, 64),
    ...                            pixel_size=0.07, beamstop=(28, 35, 28, 35)),
    ...                   omegas=np.arange(0.0, 360.0, 3.0), binning=2)
    >>> path = inst.to_file(pathlib.Path(tempfile.mkdtemp()) / "i.yaml")
    >>> back = load_instrument(path)
    >>> back.geometry == inst.geometry, bool(np.allclose(back.omegas, inst.omegas))
    (True, True)
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InstrumentFileError(f"instrument file {path}: cannot read it "
                                  f"({exc.strerror or exc})") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            d = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            yaml = _yaml(path)
            d = yaml.safe_load(text)
        else:
            raise InstrumentFileError(f"instrument file {path}: must end in .yaml, .yml or "
                                      f".json, got {suffix!r}")
    except (json.JSONDecodeError, ValueError) as exc:
        if isinstance(exc, InstrumentFileError):
            raise
        raise InstrumentFileError(f"instrument file {path}: not valid {suffix[1:].upper()} "
                                  f"({exc})") from None
    except Exception as exc:  # yaml.YAMLError without importing yaml at module level
        raise InstrumentFileError(f"instrument file {path}: not valid YAML "
                                  f"({' '.join(str(exc).split())})") from None
    try:
        return instrument_from_dict(d, source=str(path))
    except InstrumentFileError as exc:
        message = str(exc)
        if not message.startswith(str(path)):
            message = f"{path}: {message}"
        raise InstrumentFileError(message) from None
