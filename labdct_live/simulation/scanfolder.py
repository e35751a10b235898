"""The on-disk layout of a simulated scan, its writer and its reader.

A scan folder written by :func:`write_simulated_scan` (``labdct-live simulate``) holds::

    DIR/
      scan.json          what was simulated: format, version, sample, seed, geometry (mm, deg),
                         options, background_level (C_BG), omegas (deg), frame file names,
                         spots per projection, package version
      frames/
        proj_0000.tif    uint16 frames, one file per projection, in omega order
        proj_0001.tif    (deflate-compressed TIFF; beam stop 0; noise free)
        ...
      truth.h5           ground truth, one entry per projection (axis 0 in omega order):
        /omega           float64 (n,)           degrees
        /clean           float32 (n, H, W)      spot intensity above background (counts)
        /labels          int32   (n, H, W)      0 = no spot, k = spot_id k of that projection
        /spots/<column>  one 1-D dataset per column of the spot table, all projections
                         concatenated; ``projection`` gives the frame index (see
                         :data:`labdct_live.simulation.forward.SPOT_COLUMNS` for the others)
      grainmap.h5        the sample's grain map in the GrainMapper3D result layout
                         (:func:`labdct_live.grains.formats.gm3d.write_gm3d`)

The folder is built under a temporary name beside ``DIR`` and renamed when complete, so a
folder named ``DIR`` is always whole.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import tifffile
from tqdm.auto import tqdm

from labdct_live import __version__
from labdct_live.grains.formats.gm3d import write_gm3d
from labdct_live.grains.grainmap import GrainMap
from labdct_live.io.output import AtomicOutputDir
from labdct_live.simulation.forward import SimulationOptions, Simulator
from labdct_live.simulation.geometry import Geometry
from labdct_live.simulation.microstructure import Sample

__all__ = ["write_simulated_scan", "SimulatedScan", "grainmap_of", "frame_name", "FORMAT_NAME",
           "FORMAT_VERSION"]

logger = logging.getLogger(__name__)

#: ``format`` and ``version`` of the ``scan.json`` of a simulated scan folder.
FORMAT_NAME = "labdct-live simulated scan"
#: See :data:`FORMAT_NAME`.
FORMAT_VERSION = 1


def frame_name(index: int) -> str:
    """File name of projection ``index`` (0-based) inside ``frames/``."""
    return f"proj_{index:04d}.tif"


def grainmap_of(sample: Sample) -> GrainMap:
    """The sample's ground-truth grain map (GrainMapper3D conventions: Z x Y x X, mm)."""
    spacing = (sample.voxel_size,) * 3
    return GrainMap.from_grain_ids(
        sample.grain_ids, spacing, sample.orientations, phase_ids=1,
        phases=[sample.material.phase], center=(0.0, 0.0, 0.0))


def write_simulated_scan(
    out: str | os.PathLike,
    sample: Sample,
    geometry: Geometry,
    options: SimulationOptions | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    compress: bool = True,
) -> Path:
    """Simulate every projection of ``geometry`` and write the scan folder described above.

    Parameters
    ----------
    out : path-like
        The scan folder to create; must not exist or be empty unless ``overwrite``. It is
        written aside and appears only when complete
        (:class:`labdct_live.io.output.AtomicOutputDir`).
    sample, geometry, options
        What to simulate (see :class:`labdct_live.simulation.forward.Simulator`).
    overwrite : bool
        Replace an existing scan folder (only one labdct-live wrote: it holds the marker).
    progress : bool
        Show a progress bar.
    compress : bool
        Deflate-compress the TIFF frames (lossless; noise-free frames shrink ~50x).

    Returns
    -------
    Path
        The completed folder.
    """
    output = AtomicOutputDir(out, overwrite=overwrite)
    with output as tmp:
        (tmp / "frames").mkdir()
        sim = Simulator(sample, geometry, options)
        omegas = geometry.omegas
        rows, cols = geometry.detector_shape
        n = len(omegas)
        tables = []
        chunks = (1, min(rows, 512), min(cols, 512))
        with h5py.File(tmp / "truth.h5", "w") as h5:
            h5["omega"] = omegas
            h5["omega"].attrs["units"] = "degree"
            clean = h5.create_dataset("clean", (n, rows, cols), np.float32, chunks=chunks,
                                      compression="gzip", compression_opts=1, shuffle=True)
            labels = h5.create_dataset("labels", (n, rows, cols), np.int32, chunks=chunks,
                                       compression="gzip", compression_opts=1, shuffle=True)
            clean.attrs["units"] = "counts above background"
            # Two projections in flight: the numba kernels release the GIL, so one projection
            # traces while the other renders and is written.
            with ThreadPoolExecutor(max_workers=2) as pool:
                results = pool.map(sim.project, omegas)
                for i, proj in enumerate(tqdm(results, total=n, desc="simulate",
                                              unit="proj", disable=not progress)):
                    tifffile.imwrite(tmp / "frames" / frame_name(i), proj.frame,
                                     compression="zlib" if compress else None,
                                     metadata={"omega": proj.omega})
                    clean[i] = proj.clean
                    labels[i] = proj.labels
                    tables.append(proj.spots.assign(projection=i))
            spots = pd.concat(tables, ignore_index=True)
            group = h5.create_group("spots")
            for column in spots.columns:
                group[column] = spots[column].to_numpy()
        write_gm3d(tmp / "grainmap.h5", grainmap_of(sample))
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "package_version": __version__,
            "sample": sample.spec.to_dict(),
            "seed": sample.seed,
            "voxel_size": sample.voxel_size,
            "n_grains": sample.n_grains,
            "geometry": geometry.to_dict(),
            "options": sim.options.to_dict(),
            "background_level": sim.background_level,
            "omegas": omegas.tolist(),
            "frames": [f"frames/{frame_name(i)}" for i in range(n)],
            "spots_per_projection": spots.groupby("projection").size().reindex(
                range(n), fill_value=0).tolist(),
        }
        (tmp / "scan.json").write_text(json.dumps(meta, indent=1))
    return output.final


@dataclass
class SimulatedScan:
    """Read access to a scan folder written by :func:`write_simulated_scan`."""

    path: Path
    meta: dict

    @classmethod
    def open(cls, path: str | os.PathLike) -> SimulatedScan:
        path = Path(path)
        meta_file = path / "scan.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{path} is not a simulated scan folder (no scan.json)")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != FORMAT_NAME:
            raise ValueError(f"{meta_file} is not a {FORMAT_NAME!r} description")
        return cls(path, meta)

    def __len__(self) -> int:
        return len(self.meta["omegas"])

    @property
    def omegas(self) -> np.ndarray:
        return np.asarray(self.meta["omegas"])

    @property
    def geometry(self) -> Geometry:
        return Geometry.from_dict(self.meta["geometry"])

    @property
    def background_level(self) -> float:
        return float(self.meta["background_level"])

    def frame(self, index: int) -> np.ndarray:
        return tifffile.imread(self.path / self.meta["frames"][index])

    def clean(self, index: int) -> np.ndarray:
        with h5py.File(self.path / "truth.h5", "r") as h5:
            return h5["clean"][index]

    def labels(self, index: int) -> np.ndarray:
        with h5py.File(self.path / "truth.h5", "r") as h5:
            return h5["labels"][index]

    def spots(self, index: int | None = None) -> pd.DataFrame:
        """The ground-truth spot table, of one projection or of all (column ``projection``)."""
        with h5py.File(self.path / "truth.h5", "r") as h5:
            table = pd.DataFrame({k: v[()] for k, v in h5["spots"].items()})
        if index is not None:
            table = table[table["projection"] == index].reset_index(drop=True)
        return table
