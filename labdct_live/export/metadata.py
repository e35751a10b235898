"""What a reconstruction program needs to know of a scan (geometry, ω, sample, processing),
gathered once in :class:`ExportMetadata` from a scan folder, a start document or a mapping.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from labdct_live.simulation.geometry import Geometry, GeometryError
from labdct_live.simulation.scanfolder import SimulatedScan

__all__ = [
    "ExportError",
    "ExportMetadata",
    "normalize_processing",
    "metadata_from_scan",
]

logger = logging.getLogger(__name__)


class ExportError(ValueError):
    """Input that cannot be exported; the message names the parameter and what to do."""


def normalize_processing(processing: Mapping | str | None) -> dict:
    """Processing provenance in one shape: ``{"method", "model", "parameters"}``.

    Accepts the nested form (``model`` a dict with ``name``/``hash``/``version`` or a model
    name, ``parameters`` or ``params`` a dict), the flat form of
    :meth:`labdct_live.methods.ProcessingMethod.describe` (``model_name``, ``model_hash``,
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
