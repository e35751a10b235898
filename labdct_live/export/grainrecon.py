"""The GrainRecon export: binary frames named as GrainRecon reads them, its parameter block and
the ω list.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from labdct_live.export.common import _checked, _common_block, _dumps, _progress, _uniform_step
from labdct_live.export.metadata import ExportMetadata
from labdct_live.io.output import AtomicOutputDir
from labdct_live.simulation.geometry import tilt_matrix

__all__ = [
    "write_grainrecon",
    "grainrecon_name",
    "grainrecon_parameters",
    "tilt_angles_zyx",
    "GRAINRECON_SIDECAR",
    "GRAINRECON_OMEGA_LIST",
]

logger = logging.getLogger(__name__)


GRAINRECON_SIDECAR = "grainrecon.json"

GRAINRECON_OMEGA_LIST = "omega.txt"


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
