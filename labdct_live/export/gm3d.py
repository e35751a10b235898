"""The GrainMapper3D-ready export: binary frames named as the raw projections and a sidecar."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import tifffile

from labdct_live.export.common import _checked, _common_block, _dumps, _progress
from labdct_live.export.metadata import ExportError, ExportMetadata
from labdct_live.io.frames import TIFF_SUFFIXES
from labdct_live.io.output import AtomicOutputDir

__all__ = [
    "write_gm3d_ready",
    "gm3d_frame_names",
    "GM3D_SIDECAR",
    "GM3D_NAME_PATTERN",
]

logger = logging.getLogger(__name__)


GM3D_SIDECAR = "gm3d_export.json"

#: File names of the GrainMapper3D-ready copy when no raw frame names are known (an assumed
#: Zeiss-export-like pattern: a prefix, an underscore, a 0-based 4-digit projection number).
GM3D_NAME_PATTERN = "{prefix}_{index:04d}.tif"


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
