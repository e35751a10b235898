"""The NeXus export: one HDF5 file with the binary frames, ω and the instrument (NXtomo-like)."""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from labdct_live import __version__
from labdct_live.export.common import _check_count, _checked, _dumps, _json_default, _progress
from labdct_live.export.metadata import ExportError, ExportMetadata
from labdct_live.io.output import AtomicOutputDir

__all__ = [
    "write_nexus",
    "NEXUS_FILE",
]

logger = logging.getLogger(__name__)


NEXUS_FILE = "scan.nxs"


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
              description="labdct_live.simulation.Geometry.to_dict() (mm, degrees, 0-based px)")
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
