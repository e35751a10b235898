"""The projection cache: clean simulated projections and their labels stored once (npz + JSON),
so that noise and backgrounds can be drawn again for every epoch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from labdct_live import __version__
from labdct_live.io.output import atomic_file
from labdct_live.simulation.forward import SimulationOptions, Simulator
from labdct_live.simulation.geometry import Geometry
from labdct_live.simulation.microstructure import make_sample

if TYPE_CHECKING:
    from labdct_live.training.acquisitions import Acquisition

__all__ = [
    "DatasetError",
    "CachedProjection",
    "ProjectionCache",
    "build_projection_cache",
    "write_projection_cache",
]

logger = logging.getLogger(__name__)


CACHE_FORMAT = "labdct-live projection cache"

_INDEX = "index.json"


class DatasetError(ValueError):
    """Invalid dataset input or file; the message says what to change."""


@dataclass
class CachedProjection:
    """A simulated projection as stored in the cache."""

    clean: np.ndarray  #: float32 spot intensity above background (0 in the beam stop)
    labels: np.ndarray  #: int32 spot labels
    meta: dict  #: acquisition (name, spec, geometry, sample_seed), omega, background_level

    @property
    def geometry(self) -> Geometry:
        return Geometry.from_dict(self.meta["acquisition"]["geometry"])

    @property
    def omega(self) -> float:
        return float(self.meta["omega"])


def _save_npz(path: Path, **arrays) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def _write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


class _CacheWriter:
    """Writes cache entries one file at a time; the index, written last, marks completion."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if (self.directory / _INDEX).exists():
            raise FileExistsError(f"{self.directory} already holds a complete projection cache; "
                                  "open it with ProjectionCache or choose another folder")
        self.entries: list[dict] = []

    def has(self, file: str) -> bool:
        return (self.directory / file).is_file()

    def add(self, file: str, projection: CachedProjection | None, meta: dict) -> None:
        """Record ``file``; write it unless it exists (``projection`` None: it must exist)."""
        if projection is not None:
            clean = np.asarray(projection.clean, dtype=np.float32)
            labels = np.asarray(projection.labels)
            if clean.ndim != 2 or labels.shape != clean.shape or labels.dtype.kind not in "iu":
                raise DatasetError(
                    f"{file}: clean must be 2-D and labels an integer image of the same shape, "
                    f"got {clean.shape} and {labels.shape} {labels.dtype}")
            _save_npz(self.directory / file, clean=clean, labels=labels.astype(np.int32),
                             meta=np.array(json.dumps(meta)))
        self.entries.append({"file": file, "acquisition": meta["acquisition"]["name"],
                             "omega": float(meta["omega"])})

    def finish(self, **index_fields) -> ProjectionCache:
        if not self.entries:
            raise DatasetError("no projections were written to the cache")
        index = {"format": CACHE_FORMAT, "version": __version__, **index_fields,
                 "projections": self.entries}
        _write_text(self.directory / _INDEX, json.dumps(index, indent=1))
        return ProjectionCache(self.directory)


def _check_cache_meta(meta: dict, where: str) -> None:
    try:
        Geometry.from_dict(meta["acquisition"]["geometry"])
        str(meta["acquisition"]["name"])
        float(meta["omega"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(
            f"{where}: meta needs 'omega' and 'acquisition' with 'name' and 'geometry' "
            f"(Geometry.to_dict()): {exc}") from exc


def write_projection_cache(directory: str | os.PathLike,
                           projections: Iterable[CachedProjection]) -> ProjectionCache:
    """Write projections that are already at hand (e.g. from real simulations run elsewhere,
    or constructed in tests) as a cache.

    Each projection's ``meta`` needs ``omega`` and ``acquisition`` with ``name`` and
    ``geometry`` (:meth:`Geometry.to_dict`).
    """
    writer = _CacheWriter(directory)
    acquisitions: dict[str, dict] = {}
    for k, projection in enumerate(projections):
        _check_cache_meta(projection.meta, f"projection {k}")
        name = str(projection.meta["acquisition"]["name"])
        acquisitions.setdefault(name, projection.meta["acquisition"])
        writer.add(f"{k:05d}_{name}.npz", projection, projection.meta)
    return writer.finish(acquisitions=list(acquisitions.values()))


def build_projection_cache(
    directory: str | os.PathLike,
    acquisitions: Sequence[Acquisition],
    projections_per_acquisition: int,
    *,
    seed: int = 0,
    simulation_options: Any = None,
    progress: bool = True,
) -> ProjectionCache:
    """Simulate projections of every acquisition into a cache folder.

    Rotation angles are drawn at random (seeded) from each geometry's omega grid, without
    repeats. Each projection is written atomically as it is made; ``index.json`` is written
    last and marks the cache complete. Running again on an incomplete folder reuses the
    projections already there (an interrupted build resumes).

    Parameters
    ----------
    directory : path
        Cache folder (created).
    acquisitions : sequence of Acquisition
    projections_per_acquisition : int
    seed : int
        Chooses the rotation angles.
    simulation_options : SimulationOptions, optional
    progress : bool
        Show progress bars.

    Returns
    -------
    ProjectionCache
    """
    from tqdm.auto import tqdm


    if not acquisitions:
        raise DatasetError("acquisitions is empty: give at least one sample and geometry")
    if int(projections_per_acquisition) < 1:
        raise DatasetError(
            f"projections_per_acquisition must be >= 1, got {projections_per_acquisition!r}")
    names = [a.name for a in acquisitions]
    if len(set(names)) != len(names):
        raise DatasetError(f"acquisition names must be unique, got {names}")
    writer = _CacheWriter(directory)
    options = simulation_options or SimulationOptions()
    n_proj = int(projections_per_acquisition)
    reused = 0
    bar = tqdm(total=len(acquisitions) * n_proj, desc="simulating projections",
               disable=not progress)
    for a_index, acq in enumerate(acquisitions):
        omegas = acq.geometry.omegas
        if n_proj > len(omegas):
            raise DatasetError(f"{acq.name}: {n_proj} projections requested but its geometry "
                               f"has only {len(omegas)} rotation angles")
        rng = np.random.default_rng([seed, a_index])
        chosen = np.sort(rng.choice(len(omegas), size=n_proj, replace=False))
        simulator = None
        for k, omega_index in enumerate(chosen):
            file = f"{a_index:03d}_{acq.name}_{k:04d}.npz"
            meta = {"acquisition": acq.to_dict(), "omega": float(omegas[omega_index]),
                    "omega_index": int(omega_index),
                    "background_level": float(options.background_level),
                    "simulation": options.to_dict()}
            projection = None
            if writer.has(file):
                reused += 1
            else:
                if simulator is None:
                    simulator = Simulator(make_sample(acq.spec, seed=acq.sample_seed),
                                          acq.geometry, options)
                sim = simulator.project(float(omegas[omega_index]))
                projection = CachedProjection(sim.clean, sim.labels, meta)
            writer.add(file, projection, meta)
            bar.update(1)
    bar.close()
    if reused:
        logger.info("reused %d projections already in %s", reused, writer.directory)
    return writer.finish(seed=seed, acquisitions=[a.to_dict() for a in acquisitions])


class ProjectionCache(Sequence):
    """Read access to a cache written by :func:`build_projection_cache`.

    ``cache[i]`` loads projection ``i`` (a :class:`CachedProjection`).
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        index_file = self.directory / _INDEX
        if not index_file.is_file():
            raise FileNotFoundError(
                f"{self.directory} is not a complete projection cache (no {_INDEX}); build it "
                "with build_projection_cache or `labdct-live synth`")
        index = json.loads(index_file.read_text())
        if index.get("format") != CACHE_FORMAT:
            raise DatasetError(f"{index_file} is not a {CACHE_FORMAT!r} index")
        self.index = index
        self.entries: list[dict] = index["projections"]
        if not self.entries:
            raise DatasetError(f"the projection cache {self.directory} is empty")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> CachedProjection:  # type: ignore[override]
        entry = self.entries[i]
        path = self.directory / entry["file"]
        try:
            with np.load(path) as data:
                return CachedProjection(clean=data["clean"], labels=data["labels"],
                                        meta=json.loads(str(data["meta"])))
        except (OSError, KeyError, ValueError) as exc:
            raise DatasetError(f"cannot read cached projection {path}: {exc}") from exc

    def acquisition_of(self, i: int) -> str:
        return self.entries[i]["acquisition"]
