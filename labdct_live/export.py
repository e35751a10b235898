"""Reconstruction-ready exports of a segmented (binarised) LabDCT scan.

Three formats, each written as one folder that appears only when complete
(:class:`labdct_live.io.AtomicOutputDir`):

==============  =================================================================================
``grainrecon``  ``proj0001.tif``, ``proj0002.tif``, ... uint8 0/255 in projection order, plus
                ``omega.txt`` (one angle per line) and ``grainrecon.json`` (GrainRecon's setup
                parameters derived from our geometry, omegas, exposure, provenance)
``gm3d``        "GrainMapper3D-ready": a uint16 copy of the binarised stack under the
                acquisition's own frame names, plus ``gm3d_export.json`` (geometry, omega and
                exposure per frame, sample, processing provenance). GrainMapper3D's input
                format is not public; see docs/export.md for what is assumed.
``nexus``       ``scan.nxs``: one NeXus-style HDF5 file of the whole processed scan for archiving
                (``/entry/data`` -> ``(n, rows, cols)`` uint8 masks, chunked per frame), with the
                raw frames too when given
==============  =================================================================================

Input: binary frames (uint8 {0, 1}, or bool) as an ``(n, rows, cols)`` array, a sequence of
2-D frames, or an iterable of ``(index, frame)`` pairs in any order (a live scan's results),
plus scan metadata (:class:`ExportMetadata`, or a dict for :meth:`ExportMetadata.from_dict`).
Frames are checked while they are written (shape, binary values, one frame per omega); any
error removes the half-written output.

Lengths are mm, angles degrees, exposures seconds, pixel indices 0-based (row, col) unless a
field name says otherwise (GrainRecon's parameters are MATLAB 1-based).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import h5py
import numpy as np
import tifffile
from tqdm.auto import tqdm

from labdct_live import __version__
from labdct_live.geometry import Geometry, GeometryError, tilt_matrix
from labdct_live.io import (
    TIFF_SUFFIXES,
    AtomicOutputDir,
    FrameStack,
    check_frame,
    open_frame_folder,
)

__all__ = [
    "FORMATS",
    "ExportError",
    "ExportMetadata",
    "normalize_processing",
    "export_scan",
    "write_grainrecon",
    "write_gm3d_ready",
    "write_nexus",
    "grainrecon_name",
    "grainrecon_parameters",
    "gm3d_frame_names",
    "tilt_angles_zyx",
    "metadata_from_scan",
    "MaskFolder",
    "open_mask_folder",
    "GRAINRECON_SIDECAR",
    "GRAINRECON_OMEGA_LIST",
    "GM3D_SIDECAR",
    "GM3D_NAME_PATTERN",
    "NEXUS_FILE",
]

logger = logging.getLogger(__name__)

GRAINRECON_SIDECAR = "grainrecon.json"
GRAINRECON_OMEGA_LIST = "omega.txt"
GM3D_SIDECAR = "gm3d_export.json"
#: File names of the GrainMapper3D-ready copy when no raw frame names are known (an assumed
#: Zeiss-export-like pattern: a prefix, an underscore, a 0-based 4-digit projection number).
GM3D_NAME_PATTERN = "{prefix}_{index:04d}.tif"
NEXUS_FILE = "scan.nxs"


class ExportError(ValueError):
    """Input that cannot be exported; the message names the parameter and what to do."""


# --------------------------------------------------------------------------- metadata
def normalize_processing(processing: Mapping | str | None) -> dict:
    """Processing provenance in one shape: ``{"method", "model", "parameters"}``.

    Accepts the nested form (``model`` a dict with ``name``/``hash``/``version`` or a model
    name, ``parameters`` or ``params`` a dict), the flat form of
    :meth:`labdct_live.processing.ProcessingMethod.describe` (``model_name``, ``model_hash``,
    ``model_version``, other keys are parameters) and ``segmentation.json`` of
    ``labdct-live segment``.

    Parameters
    ----------
    processing : mapping, str or None
        The provenance; a string is a method name; None means unknown.

    Returns
    -------
    dict
        ``method`` (str), ``model`` (dict with some of name/hash/version, or None) and
        ``parameters`` (dict of everything else).
    """
    if processing is None or isinstance(processing, str):
        return {"method": processing or "unknown", "model": None, "parameters": {}}
    rest = dict(processing)
    method = str(rest.pop("method", "unknown"))
    model = rest.pop("model", None)
    model = {"name": model} if isinstance(model, str) else dict(model or {})
    for key in ("name", "hash", "version"):
        flat = rest.pop(f"model_{key}", None)
        if flat not in (None, ""):
            model.setdefault(key, flat)
    parameters = dict(rest.pop("parameters", None) or {})
    parameters.update(rest.pop("params", None) or {})
    parameters.update(rest)
    return {"method": method, "model": model or None, "parameters": parameters}


def _geometry_from(value: Any) -> tuple[Geometry, list | None]:
    """Geometry from a Geometry or its ``to_dict()`` (which may carry an ``omegas`` list)."""
    if isinstance(value, Geometry):
        return value, None
    if not isinstance(value, Mapping):
        raise ExportError("metadata['geometry'] must be a Geometry or Geometry.to_dict(), got "
                          f"{type(value).__name__}")
    values = dict(value)
    omegas = values.pop("omegas", None)
    try:
        return Geometry.from_dict(values), omegas
    except GeometryError as exc:
        raise ExportError(f"metadata['geometry']: {exc}") from exc


def _per_frame(value: Any, n: int, name: str) -> np.ndarray | None:
    if value is None:
        return None
    array = np.asarray(value, dtype=float)
    if array.ndim == 0:
        array = np.full(n, float(array))
    if array.shape != (n,):
        raise ExportError(f"metadata[{name!r}] has {array.size} value(s) but there are {n} "
                          "omegas; give one value per frame (or one for all)")
    if not np.isfinite(array).all():
        raise ExportError(f"metadata[{name!r}] holds NaN or infinite values")
    return array


@dataclass(frozen=True, eq=False)
class ExportMetadata:
    """What an export needs to know about the scan besides its frames.

    Parameters
    ----------
    geometry : Geometry
        The acquisition geometry; frames must be ``geometry.detector_shape``.
    omegas : array_like
        Rotation angle of every frame (degrees), in projection order; the number of frames.
    exposure : array_like or None
        Exposure of every frame (seconds), if known.
    sample : dict
        Sample description (``name`` is used for file names when needed).
    processing : dict
        Provenance in the form of :func:`normalize_processing`.
    frame_names : sequence of str or None
        Names of the raw frames, in projection order (kept by the GrainMapper3D-ready export).
    extra : dict
        Anything else (e.g. the raw run's uid); copied into every sidecar.
    """

    geometry: Geometry
    omegas: np.ndarray
    exposure: np.ndarray | None = None
    sample: dict = field(default_factory=dict)
    processing: dict = field(default_factory=lambda: normalize_processing(None))
    frame_names: tuple[str, ...] | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        omegas = np.asarray(self.omegas, dtype=float)
        if omegas.ndim != 1 or omegas.size == 0 or not np.isfinite(omegas).all():
            raise ExportError(f"omegas must be a non-empty list of finite angles (degrees), got "
                              f"shape {omegas.shape}")
        object.__setattr__(self, "omegas", omegas)
        n = omegas.size
        object.__setattr__(self, "exposure", _per_frame(self.exposure, n, "exposure"))
        object.__setattr__(self, "processing", normalize_processing(self.processing))
        object.__setattr__(self, "sample", dict(self.sample or {}))
        if self.frame_names is not None:
            names = tuple(str(v) for v in self.frame_names)
            if len(names) != n:
                raise ExportError(f"metadata['frame_names'] lists {len(names)} names but there "
                                  f"are {n} omegas; give one name per frame")
            object.__setattr__(self, "frame_names", names)
        if n != self.geometry.n_projections:
            logger.info("exporting %d frames; the geometry describes %d projections", n,
                        self.geometry.n_projections)

    @property
    def n_frames(self) -> int:
        """Number of frames (= number of omegas)."""
        return int(self.omegas.size)

    @classmethod
    def from_dict(cls, metadata: Mapping) -> ExportMetadata:
        """Build from a plain dict (e.g. a ``--meta`` JSON file).

        Keys: ``geometry`` (required: a Geometry or ``Geometry.to_dict()``, optionally with
        ``omegas``), ``omegas`` (degrees; default ``geometry["omegas"]``, else the geometry's
        ``omega_start + omega_step * k``), ``exposure`` (seconds, one per frame or one for
        all), ``sample`` (dict, or a name), ``processing`` (see
        :func:`normalize_processing`), ``frame_names``; other keys go to ``extra``.
        """
        if isinstance(metadata, ExportMetadata):
            return metadata
        if not isinstance(metadata, Mapping):
            raise ExportError(f"metadata must be a dict or ExportMetadata, got "
                              f"{type(metadata).__name__}")
        if "geometry" not in metadata:
            raise ExportError("metadata['geometry'] is missing: give Geometry.to_dict() of the "
                              "scan (e.g. from its scan.json)")
        geometry, geometry_omegas = _geometry_from(metadata["geometry"])
        omegas = metadata.get("omegas", geometry_omegas)
        if omegas is None:
            logger.info("no omegas given: using the geometry's omega_start and omega_step")
            omegas = geometry.omegas
        sample = metadata.get("sample")
        known = {"geometry", "omegas", "exposure", "sample", "processing", "frame_names"}
        return cls(
            geometry=geometry,
            omegas=omegas,
            exposure=metadata.get("exposure"),
            sample={"name": sample} if isinstance(sample, str) else dict(sample or {}),
            processing=metadata.get("processing"),
            frame_names=metadata.get("frame_names"),
            extra={k: v for k, v in metadata.items() if k not in known},
        )

    def to_dict(self) -> dict:
        """Plain-python form, readable by :meth:`from_dict`."""
        return {
            "geometry": self.geometry.to_dict(),
            "omegas": self.omegas.tolist(),
            "exposure": None if self.exposure is None else self.exposure.tolist(),
            "sample": self.sample,
            "processing": self.processing,
            "frame_names": None if self.frame_names is None else list(self.frame_names),
            **self.extra,
        }


def metadata_from_scan(folder: str | os.PathLike) -> dict:
    """Export metadata of a simulated scan folder (``labdct-live simulate``), as a dict.

    Geometry and omegas come from its ``scan.json``, the sample from its description and
    seed, and the frame names from its ``frames/`` list.
    """
    from labdct_live.scanfiles import SimulatedScan  # imports the simulator: only when needed

    scan = SimulatedScan.open(folder)
    meta = scan.meta
    return {
        "geometry": meta["geometry"],
        "omegas": meta["omegas"],
        "sample": {**meta.get("sample", {}), "seed": meta.get("seed"),
                   "n_grains": meta.get("n_grains")},
        "frame_names": [PurePosixPath(f).name for f in meta["frames"]],
        "source_scan": str(Path(folder).resolve()),
    }


# ----------------------------------------------------------------------- frame checks
def _is_pair(item: Any) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and np.ndim(item[0]) == 0


def _indexed(frames: Any) -> Iterator[tuple[int, Any]]:
    """``(index, frame)`` from an array, a sequence of frames or ``(index, frame)`` pairs."""
    if isinstance(frames, np.ndarray):
        yield from enumerate(frames)
        return
    for position, item in enumerate(frames):
        if _is_pair(item):
            index, frame = item
            yield int(index), frame
        else:
            yield position, item


def _as_binary(frame: np.ndarray, where: str) -> np.ndarray:
    """The frame as uint8 {0, 1}, or an ExportError naming the values that are not binary."""
    if frame.dtype == bool:
        return frame.view(np.uint8)
    if frame.dtype.kind in "ui":
        if frame.min() >= 0 and frame.max() <= 1:
            return frame.astype(np.uint8, copy=False)
    elif frame.dtype.kind == "f":
        if np.all((frame == 0) | (frame == 1)):
            return frame.astype(np.uint8)
    else:
        raise ExportError(f"{where}: pixel type {frame.dtype} is not a binary mask; pass uint8 "
                          "or bool masks")
    values = np.unique(frame)
    shown = ", ".join(str(v) for v in values[:6]) + (", ..." if values.size > 6 else "")
    raise ExportError(f"{where} is not binary: it holds the values {shown}; pass masks of 0 "
                      "and 1 (e.g. mask > 0). Masks saved as 0/255 images are read by "
                      "open_mask_folder")


def _check_count(frames: Any, n: int, what: str) -> None:
    """Fail before any output is made when the number of frames is known up front."""
    if isinstance(frames, np.ndarray) and frames.ndim != 3:
        raise ExportError(f"{what} must be an (n, rows, cols) array, got shape {frames.shape}")
    if isinstance(frames, (np.ndarray, Sequence, MaskFolder, FrameStack)) and len(frames) != n:
        raise ExportError(f"{what} holds {len(frames)} frames but the metadata lists {n} "
                          "omegas; give one omega per frame")


def _checked(frames: Any, meta: ExportMetadata, what: str = "binary_frames",
             binary: bool = True) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, frame)`` after checking index, shape and (if ``binary``) values.

    Raises ExportError for an index outside ``0..n-1``, a repeated or missing index, a frame
    whose shape differs from the detector's, or a non-binary mask.
    """
    n = meta.n_frames
    shape = meta.geometry.detector_shape
    _check_count(frames, n, what)
    seen = np.zeros(n, dtype=bool)
    for index, frame in _indexed(frames):
        where = f"{what}[{index}]"
        if not 0 <= index < n:
            raise ExportError(f"{where}: frame index {index} is outside 0..{n - 1} (the "
                              f"metadata lists {n} omegas)")
        if seen[index]:
            raise ExportError(f"{where}: frame {index} was given twice")
        frame = np.asarray(frame)
        if frame.shape != shape:
            raise ExportError(f"{where} has shape {frame.shape} but the geometry's detector is "
                              f"{shape}; all frames must match geometry.detector_shape")
        frame = _as_binary(frame, where) if binary else check_frame(frame, where)
        seen[index] = True
        yield index, frame
    if not seen.all():
        missing = np.flatnonzero(~seen)
        listed = ", ".join(map(str, missing[:8])) + (", ..." if missing.size > 8 else "")
        raise ExportError(f"{what}: {missing.size} of {n} frames are missing (index {listed}); "
                          "the metadata lists one omega per frame")


def _progress(items: Iterable, n: int, desc: str, show: bool) -> Iterable:
    return tqdm(items, total=n, desc=desc, unit="frame", disable=not show)


# ---------------------------------------------------------------------- sidecar helpers
def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=_json_default)


def _uniform_step(omegas: np.ndarray) -> float | None:
    """The rotation step if the omegas are equally spaced, else None."""
    if omegas.size < 2:
        return None
    steps = np.diff(omegas)
    return float(steps[0]) if np.allclose(steps, steps[0], rtol=0, atol=1e-6) else None


def _common_block(meta: ExportMetadata, fmt: str) -> dict:
    """What every sidecar carries: scan, sample, provenance."""
    return {
        "format": f"labdct-live {fmt} export",
        "version": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "software": {"labdct_live": __version__},
        "n_frames": meta.n_frames,
        "omega_deg": meta.omegas.tolist(),
        "omega_step_deg": _uniform_step(meta.omegas),
        "exposure_s": None if meta.exposure is None else meta.exposure.tolist(),
        "geometry": meta.geometry.to_dict(),
        "sample": meta.sample,
        "processing": meta.processing,
        "raw_frame_names": None if meta.frame_names is None else list(meta.frame_names),
        "extra": meta.extra,
    }


# ------------------------------------------------------------------------- GrainRecon
def grainrecon_name(index: int) -> str:
    """GrainRecon's file name of projection ``index`` (0-based): ``proj0001.tif`` for 0."""
    return f"proj{index + 1:04d}.tif"


def tilt_angles_zyx(tilt_deg: Sequence[float]) -> tuple[float, float, float]:
    """Our detector tilt re-expressed for a ``Rz(tz) @ Ry(ty) @ Rx(tx)`` composition.

    Our tilt matrix is ``Rx(a) @ Ry(b) @ Rz(c)`` (docs/physics.md §1); GrainRecon composes its
    detector rotation in the opposite order. This returns ``(tx, ty, tz)`` in degrees with
    ``Rz(tz) @ Ry(ty) @ Rx(tx) == Rx(a) @ Ry(b) @ Rz(c)``; equal to ``(a, b, c)`` when at most
    one angle is non-zero.

    Parameters
    ----------
    tilt_deg : (float, float, float)
        ``(a, b, c)`` of :attr:`Geometry.tilt`.

    Returns
    -------
    (float, float, float)
        ``(tx, ty, tz)`` in degrees.
    """
    r = tilt_matrix(tuple(float(v) for v in tilt_deg))
    # For R = Rz(tz) Ry(ty) Rx(tx): R[2,0] = -sin ty, R[2,1] = cos ty sin tx,
    # R[2,2] = cos ty cos tx, R[1,0] = sin tz cos ty, R[0,0] = cos tz cos ty.
    ty = np.arcsin(np.clip(-r[2, 0], -1.0, 1.0))
    tx = np.arctan2(r[2, 1], r[2, 2])
    tz = np.arctan2(r[1, 0], r[0, 0])
    return tuple(float(v) + 0.0 for v in np.rad2deg([tx, ty, tz]))  # + 0.0: no -0.0


def grainrecon_parameters(metadata: ExportMetadata | Mapping) -> dict:
    """GrainRecon's experimental set-up parameters derived from our geometry.

    Pixel positions are MATLAB 1-based (ours are 0-based): ``dety0 = center_col + 1``,
    ``BeamStopY = [col_min + 1, col_max + 1]``. GrainRecon's detector y runs along our
    columns and z along our rows with the same flip (``y = (dety0 - dety) * pixelysize``).
    ``ExpTime`` is the exposure when it is the same for every frame, else None.

    Returns
    -------
    dict
        ``Lsam2sou, Lsam2det, detysize, detzsize, pixelysize, pixelzsize, dety0, detz0,
        dety00, detz00, P0y, P0z, tilt_x, tilt_y, tilt_z, BeamStopY, BeamStopZ, ExpTime``
        (mm, pixels, degrees, seconds) and ``rotation_step`` (degrees, None if uneven).
    """
    meta = ExportMetadata.from_dict(metadata)
    g = meta.geometry
    rows, cols = g.detector_shape
    tilt_x, tilt_y, tilt_z = tilt_angles_zyx(g.tilt)
    r0, r1, c0, c1 = g.beamstop
    exposure = meta.exposure
    constant = exposure is not None and np.allclose(exposure, exposure[0])
    return {
        "Lsam2sou": g.lss,
        "Lsam2det": g.lsd,
        "detysize": cols,
        "detzsize": rows,
        "pixelysize": g.pixel_size,
        "pixelzsize": g.pixel_size,
        "dety0": g.center[1] + 1.0,
        "detz0": g.center[0] + 1.0,
        "dety00": g.offset[0],
        "detz00": g.offset[1],
        "P0y": 0.0,
        "P0z": 0.0,
        "tilt_x": tilt_x,
        "tilt_y": tilt_y,
        "tilt_z": tilt_z,
        "BeamStopY": [c0 + 1, c1 + 1] if g.has_beamstop else None,
        "BeamStopZ": [r0 + 1, r1 + 1] if g.has_beamstop else None,
        "ExpTime": float(exposure[0]) if constant else None,
        "rotation_step": _uniform_step(meta.omegas),
    }


def write_grainrecon(
    binary_frames: Any,
    metadata: ExportMetadata | Mapping,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = True,
    compression: str | None = "zlib",
) -> Path:
    """Write the GrainRecon layout: ``proj0001.tif ...``, ``omega.txt``, ``grainrecon.json``.

    Parameters
    ----------
    binary_frames : ndarray, sequence or iterable
        Masks (uint8 {0, 1} or bool) in projection order, or ``(index, mask)`` pairs.
    metadata : ExportMetadata or dict
        Geometry, omegas and provenance (see :meth:`ExportMetadata.from_dict`).
    out : path-like
        Output folder; must not exist or be empty unless ``overwrite``.
    overwrite : bool
        Replace an existing non-empty folder (once the new one is complete).
    progress : bool
        Show a progress bar.
    compression : str or None
        TIFF compression (``"zlib"`` = Adobe Deflate, which MATLAB's ``imread`` reads);
        None for uncompressed files.

    Returns
    -------
    Path
        The output folder.
    """
    meta = ExportMetadata.from_dict(metadata)
    out = Path(out)
    with AtomicOutputDir(out, overwrite=overwrite) as tmp:
        frames = _checked(binary_frames, meta)
        for index, mask in _progress(frames, meta.n_frames, "export grainrecon", progress):
            tifffile.imwrite(tmp / grainrecon_name(index), mask * np.uint8(255),
                             compression=compression)
        np.savetxt(tmp / GRAINRECON_OMEGA_LIST, meta.omegas, fmt="%.10g")
        sidecar = {
            **_common_block(meta, "grainrecon"),
            "projections": {
                "files": [grainrecon_name(i) for i in range(meta.n_frames)],
                "pixel_values": {"background": 0, "spot": 255},
                "dtype": "uint8",
                "omega_list": GRAINRECON_OMEGA_LIST,
            },
            "grainrecon_parameters": grainrecon_parameters(meta),
            "conventions": (
                "proj{k:04d}.tif is frame k-1 at omega_deg[k-1]; any pixel > 0 is spot. "
                "GrainRecon pixel positions are 1-based; 'geometry' is ours (0-based pixels, "
                "tilt = Rx*Ry*Rz in degrees); tilt_x/y/z are the same rotation composed "
                "Rz*Ry*Rx. Lengths mm, angles degrees, exposure seconds."
            ),
        }
        (tmp / GRAINRECON_SIDECAR).write_text(_dumps(sidecar))
    logger.info("wrote %d GrainRecon projections to %s", meta.n_frames, out)
    return out


# ---------------------------------------------------------------- GrainMapper3D-ready
def _tiff_name(raw: str) -> str:
    """A raw frame name as a TIFF file name (``a.tif`` stays, ``a.raw`` -> ``a.raw.tif``,
    page 3 of a stack ``s.tif#3`` -> ``s_p0003.tif``)."""
    name, _, page = raw.partition("#")
    base = PurePosixPath(name.replace("\\", "/")).name
    if not base:
        raise ExportError(f"frame name {raw!r} is empty; give file names in frame_names")
    stem, suffix = base, ".tif"
    if base.lower().endswith(TIFF_SUFFIXES):
        stem, extension = base.rsplit(".", 1)
        suffix = "." + extension
    if page:
        stem = f"{stem}_p{page.zfill(4)}"
    return stem + suffix


def _file_prefix(sample: Mapping) -> str:
    name = str(sample.get("name") or "proj")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return safe or "proj"


def gm3d_frame_names(metadata: ExportMetadata | Mapping,
                     pattern: str = GM3D_NAME_PATTERN) -> list[str]:
    """File names of the GrainMapper3D-ready copy, in projection order.

    The raw frame names when the metadata has them (folders dropped, ``.tif`` appended unless
    the name already ends ``.tif``/``.tiff``); otherwise ``pattern`` formatted with
    ``prefix`` (the sample name, or ``proj``) and ``index`` (0-based).
    """
    meta = ExportMetadata.from_dict(metadata)
    if meta.frame_names is not None:
        names = [_tiff_name(n) for n in meta.frame_names]
    else:
        prefix = _file_prefix(meta.sample)
        names = [pattern.format(prefix=prefix, index=i) for i in range(meta.n_frames)]
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ExportError(f"frame names must be unique; repeated: {duplicates[:5]}")
    if GM3D_SIDECAR in names:
        raise ExportError(f"a frame may not be named {GM3D_SIDECAR}")
    return names


def write_gm3d_ready(
    binary_frames: Any,
    metadata: ExportMetadata | Mapping,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = True,
    spot_value: int = 65535,
    name_pattern: str = GM3D_NAME_PATTERN,
    compression: str | None = None,
) -> Path:
    """Write the "GrainMapper3D-ready" copy: uint16 TIFFs under the raw names + a JSON sidecar.

    GrainMapper3D's input format is not public; this is a binarised copy of the projection
    stack in the acquisition's order and naming with the geometry in ``gm3d_export.json``
    (see docs/export.md for the assumptions).

    Parameters
    ----------
    binary_frames : ndarray, sequence or iterable
        Masks (uint8 {0, 1} or bool) in projection order, or ``(index, mask)`` pairs.
    metadata : ExportMetadata or dict
        Geometry, omegas, exposure, sample, provenance and (ideally) the raw frame names.
    out : path-like
        Output folder; must not exist or be empty unless ``overwrite``.
    overwrite, progress
        As for :func:`write_grainrecon`.
    spot_value : int
        Pixel value of spot pixels (1..65535); background is 0.
    name_pattern : str
        File names when the raw names are unknown (see :func:`gm3d_frame_names`).
    compression : str or None
        TIFF compression; None (uncompressed, like a detector export) by default.

    Returns
    -------
    Path
        The output folder.
    """
    if not 1 <= int(spot_value) <= 65535:
        raise ExportError(f"spot_value must be 1..65535 for 16-bit images, got {spot_value}")
    meta = ExportMetadata.from_dict(metadata)
    names = gm3d_frame_names(meta, name_pattern)
    out = Path(out)
    value = np.uint16(spot_value)
    with AtomicOutputDir(out, overwrite=overwrite) as tmp:
        frames = _checked(binary_frames, meta)
        for index, mask in _progress(frames, meta.n_frames, "export gm3d", progress):
            tifffile.imwrite(tmp / names[index], mask.astype(np.uint16) * value,
                             compression=compression)
        g = meta.geometry
        exposure = meta.exposure
        sidecar = {
            "assumption": (
                "GrainMapper3D's input format is not public. These files are a binarised copy "
                "of the projection stack in acquisition order and naming (uint16, 0 = "
                f"background, {int(spot_value)} = spot); the geometry below is ours."
            ),
            **_common_block(meta, "GrainMapper3D-ready"),
            "pixel_values": {"background": 0, "spot": int(spot_value)},
            "dtype": "uint16",
            "frames": [
                {"file": names[i], "index": i, "omega_deg": float(meta.omegas[i]),
                 "exposure_s": None if exposure is None else float(exposure[i]),
                 "raw_name": None if meta.frame_names is None else meta.frame_names[i]}
                for i in range(meta.n_frames)
            ],
            "acquisition": {
                "source_sample_distance_mm": g.lss,
                "sample_detector_distance_mm": g.lsd,
                "pixel_size_mm": g.pixel_size,
                "detector_size_px": {"rows": g.detector_shape[0], "cols": g.detector_shape[1]},
                "beam_center_px": {"row": g.center[0], "col": g.center[1]},
                "beam_stop_px": (dict(zip(("row_min", "row_max", "col_min", "col_max"),
                                          g.beamstop)) if g.has_beamstop else None),
                "detector_tilt_deg": list(g.tilt),
                "detector_tilt_convention": "R = Rx(tilt[0]) @ Ry(tilt[1]) @ Rz(tilt[2])",
                "detector_offset_mm": {"y": g.offset[0], "z": g.offset[1]},
                "tube_voltage_kv": g.kvp,
                "pixel_index_base": 0,
            },
        }
        (tmp / GM3D_SIDECAR).write_text(_dumps(sidecar))
    logger.info("wrote %d GrainMapper3D-ready frames to %s", meta.n_frames, out)
    return out


# ---------------------------------------------------------------------------- NeXus
def _nx_group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.create_group(name)
    group.attrs["NX_class"] = nx_class
    return group


def _nx_field(group: h5py.Group, name: str, value: Any, units: str | None = None,
              **attrs: Any) -> h5py.Dataset:
    dataset = group.create_dataset(name, data=value)
    if units is not None:
        dataset.attrs["units"] = units
    for key, attr in attrs.items():
        dataset.attrs[key] = attr
    return dataset


def _write_parameters(group: h5py.Group, parameters: Mapping) -> None:
    """Scalars as datasets; anything else as a JSON string."""
    for key, value in parameters.items():
        key = str(key).replace("/", "_")  # a slash would make a subgroup
        if isinstance(value, (bool, int, float, str, np.generic)):
            group.create_dataset(key, data=value)
        else:
            group.create_dataset(key, data=json.dumps(value, default=_json_default))


def _nexus_metadata(f: h5py.File, meta: ExportMetadata) -> tuple[h5py.Group, h5py.Group]:
    """Everything but the frames; returns the entry and the detector group."""
    g = meta.geometry
    f.attrs["NX_class"] = "NXroot"
    f.attrs["default"] = "entry"
    f.attrs["creator"] = f"labdct-live {__version__}"
    f.attrs["file_time"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")
    entry = _nx_group(f, "entry", "NXentry")
    entry.attrs["default"] = "data"
    sample_name = str(meta.sample.get("name", "unknown"))
    _nx_field(entry, "title", f"processed LabDCT scan of {sample_name}")
    _nx_field(entry, "program_name", "labdct-live", version=__version__)

    instrument = _nx_group(entry, "instrument", "NXinstrument")
    _nx_field(instrument, "name", "LabDCT")
    _nx_field(instrument, "geometry", _dumps(g.to_dict()),
              description="labdct_live.geometry.Geometry.to_dict() (mm, degrees, 0-based px)")
    source = _nx_group(instrument, "source", "NXsource")
    _nx_field(source, "type", "Fixed Tube X-ray")
    _nx_field(source, "probe", "x-ray")
    _nx_field(source, "voltage", g.kvp, "kV")
    _nx_field(source, "distance", -g.lss, "mm",
              long_name="source position along the beam from the rotation axis (= -Lss)")

    detector = _nx_group(instrument, "detector", "NXdetector")
    _nx_field(detector, "distance", g.lsd, "mm", long_name="rotation axis to detector (Lsd)")
    _nx_field(detector, "x_pixel_size", g.pixel_size, "mm")
    _nx_field(detector, "y_pixel_size", g.pixel_size, "mm")
    _nx_field(detector, "beam_center_x", g.center[1], "pixel", long_name="column, 0-based")
    _nx_field(detector, "beam_center_y", g.center[0], "pixel", long_name="row, 0-based")
    _nx_field(detector, "tilt", np.asarray(g.tilt), "degree",
              convention="R = Rx(tilt[0]) @ Ry(tilt[1]) @ Rz(tilt[2]) about the centre")
    _nx_field(detector, "offset", np.asarray(g.offset), "mm", long_name="(y, z) shift")
    if g.has_beamstop:
        _nx_field(detector, "beam_stop", np.asarray(g.beamstop), "pixel",
                  long_name="row_min, row_max, col_min, col_max (inclusive, 0-based)")
    if meta.exposure is not None:
        _nx_field(detector, "count_time", meta.exposure, "s")

    sample = _nx_group(entry, "sample", "NXsample")
    _nx_field(sample, "name", sample_name)
    _nx_field(sample, "description", _dumps(meta.sample))
    _nx_field(sample, "rotation_angle", meta.omegas, "degree")

    process = _nx_group(entry, "process", "NXprocess")
    _nx_field(process, "program", "labdct-live")
    _nx_field(process, "version", __version__)
    _nx_field(process, "date", f.attrs["file_time"])
    _nx_field(process, "sequence_index", 1)
    _nx_field(process, "method", meta.processing["method"])
    for key, value in (meta.processing["model"] or {}).items():
        _nx_field(process, f"model_{key}", str(value))
    _write_parameters(_nx_group(process, "parameters", "NXparameters"),
                      meta.processing["parameters"])
    note = _nx_group(process, "note", "NXnote")
    _nx_field(note, "type", "application/json")
    _nx_field(note, "data", _dumps({"processing": meta.processing, "extra": meta.extra}))
    if meta.frame_names is not None:
        _nx_field(process, "frame_names", np.array(meta.frame_names, dtype=h5py.string_dtype()))
    return entry, detector


def _nx_data(entry: h5py.Group, name: str, data: h5py.Dataset) -> None:
    group = _nx_group(entry, name, "NXdata")
    group.attrs["signal"] = "data"
    group.attrs["axes"] = np.array(["rotation_angle", ".", "."], dtype=h5py.string_dtype())
    group.attrs["rotation_angle_indices"] = 0
    group["data"] = data
    group["rotation_angle"] = entry["sample/rotation_angle"]


def write_nexus(
    binary_frames: Any,
    metadata: ExportMetadata | Mapping,
    out: str | os.PathLike,
    *,
    raw_frames: Any = None,
    overwrite: bool = False,
    progress: bool = True,
    compression_level: int = 4,
) -> Path:
    """Write ``out/scan.nxs``: the whole processed scan as one NeXus-style HDF5 file.

    Layout (``NX_class`` attributes on every group)::

        /entry                          NXentry (default -> data)
          instrument/                   NXinstrument; geometry = Geometry JSON
            source/                     NXsource: distance = -Lss (mm), voltage (kV)
            detector/                   NXdetector
              data                      uint8 (n, rows, cols), 1 = spot, gzip, chunk = 1 frame
              raw_data                  raw frames, same layout (only with raw_frames)
              distance, x/y_pixel_size, beam_center_x/y, tilt, offset, beam_stop, count_time
          sample/                       NXsample: name, description (JSON), rotation_angle (deg)
          data/                         NXdata: data, rotation_angle (links)
          raw/                          NXdata of raw_data (only with raw_frames)
          process/                      NXprocess: program, version, date, method,
                                        model_name/hash/version, parameters/ (NXparameters),
                                        note/ (NXnote, JSON), frame_names

    Parameters
    ----------
    binary_frames : ndarray, sequence or iterable
        Masks (uint8 {0, 1} or bool) in projection order, or ``(index, mask)`` pairs.
    metadata : ExportMetadata or dict
        Geometry, omegas, exposure, sample, provenance.
    out : path-like
        Output folder (holds ``scan.nxs``); must not exist or be empty unless ``overwrite``.
    raw_frames : ndarray, sequence or iterable, optional
        The raw frames (any integer or float type), same forms as ``binary_frames``.
    overwrite, progress
        As for :func:`write_grainrecon`.
    compression_level : int
        gzip level 0-9 of the frame datasets.

    Returns
    -------
    Path
        The output folder.
    """
    if not 0 <= int(compression_level) <= 9:
        raise ExportError(f"compression_level must be 0..9, got {compression_level}")
    meta = ExportMetadata.from_dict(metadata)
    if raw_frames is not None:  # before the masks are written, not after
        _check_count(raw_frames, meta.n_frames, "raw_frames")
    n, (rows, cols) = meta.n_frames, meta.geometry.detector_shape
    stack = {"chunks": (1, rows, cols), "compression": "gzip",
             "compression_opts": int(compression_level)}
    out = Path(out)
    with AtomicOutputDir(out, overwrite=overwrite) as tmp:
        with h5py.File(tmp / NEXUS_FILE, "w") as f:
            entry, detector = _nexus_metadata(f, meta)
            data = detector.create_dataset("data", (n, rows, cols), np.uint8, **stack)
            data.attrs["long_name"] = "binary spot mask (1 = spot)"
            for index, mask in _progress(_checked(binary_frames, meta), n, "export nexus",
                                         progress):
                data[index] = mask
            _nx_data(entry, "data", data)
            if raw_frames is not None:
                raw = None
                for index, frame in _progress(_checked(raw_frames, meta, "raw_frames", False),
                                              n, "export nexus (raw)", progress):
                    if raw is None:
                        raw = detector.create_dataset("raw_data", (n, rows, cols), frame.dtype,
                                                      shuffle=True, **stack)
                        raw.attrs["long_name"] = "raw detector frames"
                    raw[index] = frame
                _nx_data(entry, "raw", raw)
    logger.info("wrote the NeXus bundle of %d frames to %s", n, out / NEXUS_FILE)
    return out


# -------------------------------------------------------------------------- dispatch
#: Writer of each export format, by the name ``--format`` takes.
FORMATS: dict[str, Callable[..., Path]] = {
    "grainrecon": write_grainrecon,
    "gm3d": write_gm3d_ready,
    "nexus": write_nexus,
}


def export_scan(binary_frames: Any, metadata: ExportMetadata | Mapping, fmt: str,
                out: str | os.PathLike, **options: Any) -> Path:
    """Export a segmented scan in one format: the entry point of the CLI and the live hook.

    Parameters
    ----------
    binary_frames : ndarray, sequence or iterable
        Masks (uint8 {0, 1} or bool) in projection order, or ``(index, mask)`` pairs in any
        order (e.g. results read back from a catalog).
    metadata : ExportMetadata or dict
        See :meth:`ExportMetadata.from_dict`.
    fmt : {"grainrecon", "gm3d", "nexus"}
        The format.
    out : path-like
        Output folder, created only when complete.
    **options
        Passed to the writer (``overwrite``, ``progress``, ``raw_frames`` for nexus, ...).

    Returns
    -------
    Path
        The output folder.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {sorted(FORMATS)}")
    return FORMATS[fmt](binary_frames, metadata, out, **options)


# ------------------------------------------------------------------ mask folders (CLI)
@dataclass(frozen=True)
class MaskFolder:
    """The binary masks of a folder (``labdct-live segment`` output), read lazily.

    Iterating yields ``(index, mask)`` with ``mask`` uint8 {0, 1}, in projection order.
    Create with :func:`open_mask_folder`.
    """

    stack: FrameStack
    order: tuple[int, ...]

    @property
    def names(self) -> list[str]:
        """Frame names in projection order."""
        names = self.stack.names
        return [names[k] for k in self.order]

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        names = self.stack.names
        for index, k in enumerate(self.order):
            frame = self.stack[k]
            spot_values = np.unique(frame[frame != 0])
            if spot_values.size > 1 or (spot_values.size and spot_values[0] < 0):
                raise ExportError(
                    f"{self.stack.folder / names[k]} is not a binary mask (spot pixels take "
                    f"{spot_values.size} values); SOURCE must hold masks written by "
                    "'labdct-live segment', not raw frames")
            yield index, (frame != 0).view(np.uint8)


def open_mask_folder(folder: str | os.PathLike,
                     frame_names: Sequence[str] | None = None) -> MaskFolder:
    """Index a folder of binary mask TIFFs (0/255 or 0/1), in projection order.

    Parameters
    ----------
    folder : path-like
        The masks, one file per frame (natural name order) or multi-frame stacks.
    frame_names : sequence of str, optional
        The scan's frame names in projection order (folders are ignored). When given, the
        folder must hold exactly these names and is read in this order.

    Returns
    -------
    MaskFolder

    Raises
    ------
    ExportError
        If the folder's frame names differ from ``frame_names``.
    """
    stack = open_frame_folder(folder)
    names = stack.names
    if frame_names is None:
        return MaskFolder(stack, tuple(range(len(names))))
    wanted = [PurePosixPath(str(n).replace("\\", "/")).name for n in frame_names]
    position = {name: k for k, name in enumerate(names)}
    missing = [n for n in wanted if n not in position]
    unexpected = sorted(set(names) - set(wanted))
    if missing or unexpected:
        raise ExportError(
            f"{folder} does not hold the scan's frames: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}; point SOURCE at the masks of this scan")
    return MaskFolder(stack, tuple(position[n] for n in wanted))
