"""Read the input of a reconstruction from the folders the package writes.

* a **simulated scan folder** (``labdct-live simulate``, :mod:`labdct_live.simulation.scanfolder`):
  the binary frames are the simulator's ground-truth spot masks (``truth.h5`` labels > 0, the
  noise-free segmentation) or the noise-free frames above the background;
* a **segmented folder** (``labdct-live segment``): binary TIFFs (0/255) plus
  ``segmentation.json``, whose ``input`` names the segmented frame folder; when that folder
  belongs to a simulated scan (``frames/`` next to a ``scan.json``) the geometry, ω,
  material and sample come from there;
* any folder of binary TIFFs, with the geometry, ω, material and sample given explicitly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from labdct_live.reconstruction.data import ReconstructionError, SampleEnvelope, ScanData
from labdct_live.simulation.geometry import Geometry, GeometryError

__all__ = ["read_scan", "BINARY_SOURCES"]

#: What ``binary=`` may take for a simulated scan folder.
BINARY_SOURCES = ("auto", "labels", "frames")


def _scan_meta(folder: Path) -> dict | None:
    path = folder / "scan.json"
    if not path.is_file():
        return None
    from labdct_live.simulation.scanfolder import SimulatedScan

    return SimulatedScan.open(folder).meta


def _from_meta(meta: dict, frames: np.ndarray, source: str, **explicit) -> ScanData:
    geometry = explicit.get("geometry") or Geometry.from_dict(meta["geometry"])
    omegas = explicit.get("omegas")
    omegas = np.asarray(meta["omegas"] if omegas is None else omegas, dtype=float)
    sample = meta.get("sample", {})
    material = explicit.get("material") or sample.get("material")
    envelope = explicit.get("envelope") or SampleEnvelope(float(sample["diameter"]),
                                                          float(sample["height"]))
    e_min = float(meta.get("options", {}).get("spectrum_e_min", 13.0))
    extra = {"voxel_size": meta.get("voxel_size"), "n_grains": meta.get("n_grains")}
    return ScanData(frames, omegas, geometry, material, envelope, e_min=e_min, source=source,
                    extra=extra)


def _read_simulated(folder: Path, meta: dict, binary: str, **explicit) -> ScanData:
    import h5py
    import tifffile

    if binary not in BINARY_SOURCES:
        raise ReconstructionError(f"binary={binary!r}: choose one of {BINARY_SOURCES}")
    truth = folder / "truth.h5"
    if binary == "auto":
        binary = "labels" if truth.is_file() else "frames"
    if binary == "labels":
        if not truth.is_file():
            raise ReconstructionError(f"{folder} has no truth.h5: use binary='frames'")
        with h5py.File(truth, "r") as h5:
            frames = h5["labels"][()] > 0
    else:
        level = float(meta.get("background_level", 0.0))
        frames = np.stack([tifffile.imread(folder / name) > level for name in meta["frames"]])
    return _from_meta(meta, frames, f"{folder} ({binary})", **explicit)


def _load_geometry(geometry: Geometry | dict | str | os.PathLike | None) -> Geometry | None:
    if geometry is None or isinstance(geometry, Geometry):
        return geometry
    if isinstance(geometry, dict):
        data = geometry
    else:
        try:
            data = json.loads(Path(geometry).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ReconstructionError(f"cannot read the geometry file {geometry}: {exc}") from None
        data = data.get("geometry", data)
    try:
        return Geometry.from_dict(data)
    except (GeometryError, TypeError) as exc:
        raise ReconstructionError(f"bad geometry: {exc}") from None


def read_scan(path: str | os.PathLike, *, binary: str = "auto",
              geometry: Geometry | dict | str | os.PathLike | None = None,
              omegas: np.ndarray | None = None, material: str | None = None,
              envelope: SampleEnvelope | None = None) -> ScanData:
    """The :class:`ScanData` of a simulated scan folder, a segmented folder or a folder of
    binary TIFFs.

    Parameters
    ----------
    path : path-like
        The folder.
    binary : {"auto", "labels", "frames"}
        For a simulated scan folder: the ground-truth spot masks (``labels``, the default
        when ``truth.h5`` exists) or the noise-free frames above the background.
    geometry : Geometry, dict or path of a JSON file, optional
        Overrides (or, for a bare folder, supplies) the geometry; a JSON file may hold the
        ``Geometry.to_dict()`` keys or a ``scan.json`` with a ``geometry`` entry.
    omegas : ndarray, optional
        Rotation angle of each frame (degrees); default the scan's, else the geometry's.
    material : str, optional
        ``"Al"`` or ``"Fe"``; default the scan's.
    envelope : SampleEnvelope, optional
        The sample's cylinder; default the scan's.

    Returns
    -------
    ScanData

    Raises
    ------
    ReconstructionError
        When something needed is missing (no frames, no geometry, no material, no sample
        size) or inconsistent (see :class:`ScanData`).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ReconstructionError(f"{folder} is not a folder (a simulated scan folder, a "
                                  "segmented folder or a folder of binary TIFFs)")
    explicit = {"geometry": _load_geometry(geometry), "omegas": omegas, "material": material,
                "envelope": envelope}
    meta = _scan_meta(folder)
    if meta is not None and (folder / "frames").is_dir():
        return _read_simulated(folder, meta, binary, **explicit)

    from labdct_live.io.frames import EmptyFolderError, open_frame_folder

    try:
        stack = open_frame_folder(folder)
    except EmptyFolderError as exc:
        raise ReconstructionError(f"no binary frames: {exc}") from None
    frames = stack.load() > 0
    seg = folder / "segmentation.json"
    if meta is None and seg.is_file():
        info = json.loads(seg.read_text())
        source = Path(info.get("input", ""))
        for candidate in (source, source.parent):
            if str(candidate) and (candidate / "scan.json").is_file():
                meta = _scan_meta(candidate)
                break
    if meta is not None:
        return _from_meta(meta, frames, str(folder), **explicit)
    geo = explicit["geometry"]
    if geo is None:
        raise ReconstructionError(
            f"no geometry for {folder}: it is neither a simulated scan nor the segmentation of "
            "one; give the geometry (a JSON file of Geometry.to_dict() keys)")
    if envelope is None:
        raise ReconstructionError(f"no sample size for {folder}: give the sample's cylinder "
                                  "(diameter and height in mm)")
    angles = geo.omegas if omegas is None else omegas
    return ScanData(frames, angles, geo, material, envelope, source=str(folder))
