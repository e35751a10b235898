"""Training data for the U-Net: a projection cache, an unlimited pair stream, fixed datasets.

* :func:`build_projection_cache` simulates projections once and stores their noise-free
  spot image and spot labels (one compressed ``.npz`` per projection plus ``index.json``),
  so training never waits on the simulator; :class:`ProjectionCache` reads it.
* :func:`generate_crops` turns cached projections into an endless, seeded sequence of
  (noisy input, target) crops: every frame gets a fresh background, background amplitude,
  intensity scale and noise (:mod:`labdct_live.synthesis`, Eq. 1-2); crops over-sample
  spot-containing regions because most of a frame is empty. Only the crop's pixels are
  rendered, plus a coarse grid of the whole frame for the normalisation statistics, which
  therefore match :func:`~labdct_live.synthesis.normalize_frame` of the full frame.
* :class:`SyntheticPairStream` wraps it as a PyTorch ``IterableDataset`` (deterministic per
  worker), :func:`write_pair_dataset` writes a fixed HDF5 dataset with a train/validation
  split (by projection, so no frame feeds both), and :class:`PairDataset` reads one.

HDF5 layout of a pair dataset::

    /train/input        (n, h, w) float32 (normalised) or uint8 (the paper's 8-bit counts)
    /train/target       (n, h, w) uint8 {0, 1}
    /train/meta/<name>  (n,) one dataset per metadata column (projection, acquisition, omega,
                        scale, median_snr, r_bg, background, row0, col0, center, spread, ...)
    /validation/...     the same
    attrs: format, version, config (JSON), crop_size, input_format, complete (written last)
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from labdct_live import __version__
from labdct_live.backgrounds import ArrayBackground, ProceduralBackground, beam_center_pixel
from labdct_live.geometry import Geometry
from labdct_live.microstructure import SampleSpec
from labdct_live.synthesis import (
    SynthesisConfig,
    add_noise,
    draw_r_bg,
    make_target,
    normalization_stats,
    normalization_stride,
    scale_for_median_snr,
    spot_statistics,
    to_uint8,
)

__all__ = [
    "DatasetError",
    "Acquisition",
    "paper_acquisitions",
    "varied_acquisitions",
    "CachedProjection",
    "ProjectionCache",
    "build_projection_cache",
    "write_projection_cache",
    "split_projections",
    "CropSettings",
    "generate_crops",
    "SyntheticPairStream",
    "write_pair_dataset",
    "PairDataset",
]

logger = logging.getLogger(__name__)

CACHE_FORMAT = "labdct-live projection cache"
PAIRS_FORMAT = "labdct-live training pairs"
_INDEX = "index.json"


class DatasetError(ValueError):
    """Invalid dataset input or file; the message says what to change."""


# ------------------------------------------------------------------------ acquisitions
@dataclass(frozen=True)
class Acquisition:
    """A virtual sample in a geometry: what the cache simulates."""

    name: str
    spec: SampleSpec
    geometry: Geometry
    sample_seed: int

    def to_dict(self) -> dict:
        return {"name": self.name, "spec": self.spec.to_dict(),
                "geometry": self.geometry.to_dict(), "sample_seed": int(self.sample_seed)}


def paper_acquisitions(samples: Sequence[str] = ("D18", "D35", "D64"), seed: int = 0
                       ) -> list[Acquisition]:
    """The presets ``samples`` at their own (the paper's) geometry, one sample seed each."""
    from labdct_live.presets import preset

    seeds = np.random.SeedSequence([seed, 1]).generate_state(len(samples))
    return [Acquisition(name, *preset(name), int(s)) for name, s in zip(samples, seeds)]


def varied_acquisitions(n: int, seed: int = 0, **options) -> list[Acquisition]:
    """``n`` random samples and geometries (:func:`labdct_live.synthesis.random_acquisition`)."""
    from labdct_live.synthesis import random_acquisition

    out = []
    for k, s in enumerate(np.random.SeedSequence([seed, 2]).spawn(n)):
        rng = np.random.default_rng(s)
        spec, geometry = random_acquisition(rng, **options)
        out.append(Acquisition(f"varied{k:03d}-{spec.name}", spec, geometry,
                               int(rng.integers(2**31))))
    return out


# ------------------------------------------------------------------- projection cache
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


def _publish(tmp: str | Path, path: Path) -> None:
    """Rename a finished temporary file to its final name, with the usual permissions
    (``mkstemp`` creates files readable by their owner only)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def _atomic_save_npz(path: Path, **arrays) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz.partial", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


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
            _atomic_save_npz(self.directory / file, clean=clean, labels=labels.astype(np.int32),
                             meta=np.array(json.dumps(meta)))
        self.entries.append({"file": file, "acquisition": meta["acquisition"]["name"],
                             "omega": float(meta["omega"])})

    def finish(self, **index_fields) -> ProjectionCache:
        if not self.entries:
            raise DatasetError("no projections were written to the cache")
        index = {"format": CACHE_FORMAT, "version": __version__, **index_fields,
                 "projections": self.entries}
        _atomic_write_text(self.directory / _INDEX, json.dumps(index, indent=1))
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

    from labdct_live.microstructure import make_sample
    from labdct_live.simulate import SimulationOptions, Simulator

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


# ----------------------------------------------------------------------------- crops
@dataclass(frozen=True)
class CropSettings:
    """How crops are cut from synthetic frames.

    Parameters
    ----------
    size : int or None
        Crop side (pixels); None for whole frames.
    spot_fraction : float
        Probability that a crop is centred (with jitter of a third of its side) on a random
        spot rather than placed uniformly.
    crops_per_frame : int
        Crops taken from one synthetic frame (same background, scale and noise level)
        before the next frame is drawn.
    pool_size : int
        Projections kept in memory per worker.
    reuse : int
        Frames drawn, on average, from a pooled projection before it is replaced.
    augment : bool
        Random flips and transposition of each crop (input and target together).
    """

    size: int | None = 256
    spot_fraction: float = 0.75
    crops_per_frame: int = 8
    pool_size: int = 4
    reuse: int = 4
    augment: bool = True

    def __post_init__(self) -> None:
        if self.size is not None and int(self.size) < 8:
            raise DatasetError(f"crop size must be at least 8 pixels or None, got {self.size!r}")
        if not 0 <= self.spot_fraction <= 1:
            raise DatasetError(f"spot_fraction must be in [0, 1], got {self.spot_fraction!r}")
        for name in ("crops_per_frame", "pool_size", "reuse"):
            if int(getattr(self, name)) < 1:
                raise DatasetError(f"{name} must be >= 1, got {getattr(self, name)!r}")


@dataclass
class _Loaded:
    """A projection prepared for cropping: its target and spot positions computed once."""

    index: int
    clean: np.ndarray
    target: np.ndarray
    geometry: Geometry
    meta: dict
    spot_rows: np.ndarray
    spot_cols: np.ndarray
    spot_means: np.ndarray


def _load(cache: ProjectionCache, index: int, config: SynthesisConfig) -> _Loaded:
    proj = cache[index]
    geometry = proj.geometry
    exclude = geometry.beamstop_mask() if geometry.has_beamstop else None
    target = make_target(config.target, proj.clean, proj.labels, exclude, config.target_params)
    stats = spot_statistics(proj.clean, proj.labels)
    return _Loaded(index, proj.clean, target, geometry, proj.meta, stats["row"], stats["col"],
                   stats["mean"])


def generate_crops(
    cache: ProjectionCache,
    rng: np.random.Generator,
    *,
    config: SynthesisConfig = SynthesisConfig(),
    crops: CropSettings = CropSettings(),
    backgrounds: np.ndarray | None = None,
    background_seeds: Sequence[int] | None = None,
    projections: Sequence[int] | None = None,
    output: str = "float",
) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
    """Endless (input, target, meta) crops of synthetic frames (numpy; see the module doc).

    Parameters
    ----------
    cache : ProjectionCache
    rng : numpy.random.Generator
        The only source of randomness: same state, same sequence.
    config : SynthesisConfig
        Noise model, intensity range and target kind.
    crops : CropSettings
    backgrounds : (k, M, N) array in [0, 1], optional
        Background images (e.g. extracted from experimental frames) used instead of the
        procedural generator; their shape must equal the projections'.
    background_seeds : sequence of int, optional
        Procedural backgrounds limited to these seeds (a fixed set of backgrounds); a fresh
        seed for every frame when None.
    projections : sequence of int, optional
        Cache indices to draw from (all when None).
    output : {"float", "uint8"}
        ``"float"``: input normalised per frame (:func:`~labdct_live.synthesis.normalize_frame`
        statistics of the whole frame), float32. ``"uint8"``: the paper's 8-bit counts.

    Yields
    ------
    input : (h, w) float32 or uint8
    target : (h, w) uint8 {0, 1}
    meta : dict
        projection, acquisition, omega, background, scale, median_snr, r_bg, i0, tau,
        row0, col0, center, spread, flip.
    """
    if output not in ("float", "uint8"):
        raise DatasetError(f"output must be 'float' or 'uint8', got {output!r}")
    pool_indices = list(range(len(cache))) if projections is None else list(projections)
    if not pool_indices:
        raise DatasetError("projections is empty")
    if backgrounds is not None:
        backgrounds = np.asarray(backgrounds, dtype=np.float32)
        if backgrounds.ndim == 2:
            backgrounds = backgrounds[None]
        if backgrounds.ndim != 3 or len(backgrounds) == 0:
            raise DatasetError(f"backgrounds must be (k, rows, cols), got {backgrounds.shape}")
    if background_seeds is not None and len(background_seeds) == 0:
        raise DatasetError("background_seeds is empty")

    pool: list[_Loaded] = []
    while True:
        # Projection pool: fill, then replace one member about every `reuse` frames.
        if len(pool) < min(crops.pool_size, len(pool_indices)):
            pool.append(_load(cache, pool_indices[rng.integers(len(pool_indices))], config))
            proj = pool[-1]
        else:
            slot = int(rng.integers(len(pool)))
            if rng.random() < 1.0 / crops.reuse:
                pool[slot] = _load(cache, pool_indices[rng.integers(len(pool_indices))], config)
            proj = pool[slot]
        yield from _frame_crops(proj, rng, config, crops, backgrounds, background_seeds,
                                output)


def _frame_crops(proj: _Loaded, rng: np.random.Generator,
                 config: SynthesisConfig, crops: CropSettings, backgrounds, background_seeds,
                 output: str) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
    rows, cols = proj.clean.shape
    if backgrounds is not None:
        b_index = int(rng.integers(len(backgrounds)))
        if backgrounds.shape[1:] != (rows, cols):
            raise DatasetError(f"background images are {backgrounds.shape[1:]}, projections "
                               f"{(rows, cols)}: they must have the same shape")
        background = ArrayBackground(backgrounds[b_index])
        b_label = f"array:{b_index}"
    else:
        b_seed = (int(rng.integers(2**31)) if background_seeds is None
                  else int(background_seeds[rng.integers(len(background_seeds))]))
        beamstop = proj.geometry.beamstop if proj.geometry.has_beamstop else None
        background = ProceduralBackground((rows, cols), beamstop, b_seed,
                                          center=beam_center_pixel(proj.geometry))
        b_label = f"procedural:{b_seed}"

    r_bg = draw_r_bg(config.i0, rng)
    median_snr = config.draw_median_snr(rng)
    # Whole-frame statistics from the regular grid normalize_frame itself would sample.
    stride = normalization_stride((rows, cols))
    grid_r = grid_c = slice(None, None, stride)
    bg_grid = background.render(grid_r, grid_c)
    spot_r = np.clip(np.rint(proj.spot_rows / stride).astype(int), 0, bg_grid.shape[0] - 1)
    spot_c = np.clip(np.rint(proj.spot_cols / stride).astype(int), 0, bg_grid.shape[1] - 1)
    scale = scale_for_median_snr(median_snr, proj.spot_means, bg_grid[spot_r, spot_c], r_bg,
                                 config.tau)
    x_grid = add_noise(proj.clean[grid_r, grid_c] * np.float32(scale) + np.float32(r_bg) * bg_grid,
                       config.tau, rng)
    center, spread = normalization_stats(x_grid)

    h = rows if crops.size is None else min(int(crops.size), rows)
    w = cols if crops.size is None else min(int(crops.size), cols)
    n_crops = 1 if crops.size is None else crops.crops_per_frame
    base_meta = {
        "projection": proj.index, "acquisition": proj.meta["acquisition"]["name"],
        "omega": float(proj.meta["omega"]), "background": b_label, "scale": scale,
        "median_snr": median_snr, "r_bg": r_bg, "i0": config.i0, "tau": config.tau,
        "center": center, "spread": spread,
    }
    for _ in range(n_crops):
        if proj.spot_rows.size and rng.random() < crops.spot_fraction:
            k = int(rng.integers(proj.spot_rows.size))
            r_mid = proj.spot_rows[k] + rng.uniform(-h / 3, h / 3)
            c_mid = proj.spot_cols[k] + rng.uniform(-w / 3, w / 3)
            r0 = int(np.clip(round(r_mid - h / 2), 0, rows - h))
            c0 = int(np.clip(round(c_mid - w / 2), 0, cols - w))
        else:
            r0 = int(rng.integers(rows - h + 1))
            c0 = int(rng.integers(cols - w + 1))
        window = (slice(r0, r0 + h), slice(c0, c0 + w))
        x0 = proj.clean[window] * np.float32(scale)
        x0 += np.float32(r_bg) * background.render(*window)
        x = add_noise(x0, config.tau, rng)
        target = proj.target[window]
        if output == "float":
            x -= np.float32(center)
            x *= np.float32(1.0 / spread)
        else:
            x = to_uint8(x)
        flip = 0
        if crops.augment and crops.size is not None:
            flip = int(rng.integers(8))  # bit 0: rows, bit 1: cols, bit 2: transpose
            x, target = _flip(x, flip), _flip(target, flip)
        yield (np.ascontiguousarray(x), np.ascontiguousarray(target),
               {**base_meta, "row0": r0, "col0": c0, "flip": flip})


def _flip(a: np.ndarray, code: int) -> np.ndarray:
    if code & 1:
        a = a[::-1]
    if code & 2:
        a = a[:, ::-1]
    if code & 4 and a.shape[0] == a.shape[1]:
        a = a.T
    return a


# ------------------------------------------------------------------- torch datasets
def _worker_rng(seed: int) -> np.random.Generator:
    info = get_worker_info()
    worker = 0 if info is None else info.id
    return np.random.default_rng([int(seed), worker])


class SyntheticPairStream(IterableDataset):
    """Unlimited synthetic (input, target) crops for training, as a PyTorch IterableDataset.

    Each DataLoader worker draws from ``numpy.random.default_rng([seed, worker_id])``, so a
    run is reproducible for a given seed and number of workers (and workers never repeat each
    other). Items are ``(input, target)`` float32 tensors of shape ``(1, h, w)``: the
    normalised noisy input and the {0, 1} target.

    Parameters
    ----------
    cache : ProjectionCache or path
    config : SynthesisConfig
    crops : CropSettings
    backgrounds, background_seeds, projections
        See :func:`generate_crops`.
    seed : int

    Examples
    --------
    A cache of one projection of the D18 sample (128² pixels), and crops drawn from it:

    >>> import tempfile
    >>> from labdct_live.devices import scaled_geometry
    >>> from labdct_live.presets import preset
    >>> spec, geometry = preset("D18")
    >>> acquisition = Acquisition("D18", spec, scaled_geometry(geometry, (128, 128)), 1)
    >>> folder = tempfile.TemporaryDirectory()
    >>> cache = build_projection_cache(folder.name, [acquisition], 1, progress=False)
    >>> stream = SyntheticPairStream(cache, crops=CropSettings(size=64), seed=1)
    >>> x, y = next(iter(stream))
    >>> x.shape, x.dtype, bool(((y == 0) | (y == 1)).all())
    (torch.Size([1, 64, 64]), torch.float32, True)
    >>> loader = torch.utils.data.DataLoader(stream, batch_size=4, num_workers=1)
    >>> folder.cleanup()
    """

    def __init__(
        self,
        cache: ProjectionCache | str | os.PathLike,
        *,
        config: SynthesisConfig = SynthesisConfig(),
        crops: CropSettings = CropSettings(),
        backgrounds: np.ndarray | None = None,
        background_seeds: Sequence[int] | None = None,
        projections: Sequence[int] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.cache = cache if isinstance(cache, ProjectionCache) else ProjectionCache(cache)
        self.config = config
        self.crops = crops
        self.backgrounds = backgrounds
        self.background_seeds = background_seeds
        self.projections = projections
        self.seed = int(seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y, _ in generate_crops(
            self.cache, _worker_rng(self.seed), config=self.config, crops=self.crops,
            backgrounds=self.backgrounds, background_seeds=self.background_seeds,
            projections=self.projections, output="float",
        ):
            yield torch.from_numpy(x)[None], torch.from_numpy(y.astype(np.float32))[None]


def split_projections(cache: ProjectionCache, validation_fraction: float, seed: int = 0
                      ) -> tuple[list[int], list[int]]:
    """Cache indices for training and validation: whole projections, drawn at random."""
    if not 0 <= validation_fraction < 1:
        raise DatasetError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    order = np.random.default_rng([seed, 3]).permutation(len(cache))
    n_val = int(round(validation_fraction * len(cache)))
    if validation_fraction > 0:
        if len(cache) < 2:
            raise DatasetError("a validation split needs at least 2 cached projections")
        n_val = min(max(n_val, 1), len(cache) - 1)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


_META_COLUMNS = {  # name: h5py dtype
    "projection": np.int32, "acquisition": h5py.string_dtype(), "omega": np.float32,
    "background": h5py.string_dtype(), "scale": np.float32, "median_snr": np.float32,
    "r_bg": np.float32, "i0": np.float32, "tau": np.float32, "center": np.float32,
    "spread": np.float32, "row0": np.int32, "col0": np.int32, "flip": np.int8,
}


def write_pair_dataset(
    path: str | os.PathLike,
    cache: ProjectionCache | str | os.PathLike,
    n_pairs: int,
    *,
    validation_fraction: float = 0.15,
    config: SynthesisConfig = SynthesisConfig(),
    crops: CropSettings = CropSettings(),
    backgrounds: np.ndarray | None = None,
    background_seeds: Sequence[int] | None = None,
    output: str = "float",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a fixed dataset of ``n_pairs`` synthetic pairs to an HDF5 file (layout above).

    The validation pairs come from a disjoint set of projections
    (:func:`split_projections`). The file is written under a temporary name and renamed when
    complete, so an interrupted run leaves no file that looks finished.

    Parameters
    ----------
    path : path
        Output ``.h5`` file.
    cache : ProjectionCache or path
    n_pairs : int
        Total pairs (train + validation).
    validation_fraction : float
        Share of pairs (and of projections) for validation; 0 for none.
    config, crops, backgrounds, background_seeds, output
        See :func:`generate_crops`. ``crops.size=None`` writes whole frames
        (about 21 MB per 2032² float pair).
    seed : int
    overwrite : bool
        Replace an existing file.
    progress : bool

    Returns
    -------
    Path of the file written.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another name or pass overwrite=True")
    if int(n_pairs) < 1:
        raise DatasetError(f"n_pairs must be >= 1, got {n_pairs!r}")
    cache = cache if isinstance(cache, ProjectionCache) else ProjectionCache(cache)
    train_idx, val_idx = split_projections(cache, validation_fraction, seed)
    n_val = int(round(validation_fraction * n_pairs)) if val_idx else 0
    splits = [("train", train_idx, int(n_pairs) - n_val), ("validation", val_idx, n_val)]
    shape = cache[0].clean.shape
    h = shape[0] if crops.size is None else min(int(crops.size), shape[0])
    w = shape[1] if crops.size is None else min(int(crops.size), shape[1])
    dtype = np.float32 if output == "float" else np.uint8

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as h5:
            h5.attrs.update(format=PAIRS_FORMAT, version=__version__,
                            config=json.dumps(config.to_dict()),
                            crops=json.dumps(asdict(crops)), crop_size=h if crops.size else 0,
                            input_format=output, seed=seed, complete=False,
                            cache=str(cache.directory))
            bar = tqdm(total=int(n_pairs), desc="writing pairs", disable=not progress)
            for s_index, (name, indices, count) in enumerate(splits):
                group = h5.create_group(name)
                group.attrs["projections"] = np.asarray(indices, dtype=np.int32)
                inputs = group.create_dataset("input", (count, h, w), dtype=dtype,
                                              chunks=(1, h, w) if count else None,
                                              compression="lzf" if count else None)
                targets = group.create_dataset("target", (count, h, w), dtype=np.uint8,
                                               chunks=(1, h, w) if count else None,
                                               compression="lzf" if count else None)
                meta = {k: [] for k in _META_COLUMNS}
                if count:
                    stream = generate_crops(
                        cache, np.random.default_rng([seed, 4, s_index]), config=config,
                        crops=crops, backgrounds=backgrounds, background_seeds=background_seeds,
                        projections=indices, output=output)
                    for i in range(count):
                        x, y, m = next(stream)
                        inputs[i] = x
                        targets[i] = y
                        for k in meta:
                            meta[k].append(m[k])
                        bar.update(1)
                mgroup = group.create_group("meta")
                for k, dt in _META_COLUMNS.items():
                    is_text = h5py.check_string_dtype(np.dtype(dt)) is not None
                    values = np.asarray(meta[k], dtype=object if is_text else dt)
                    mgroup.create_dataset(k, data=values, dtype=dt)
            bar.close()
            h5.attrs["complete"] = True
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class PairDataset(Dataset):
    """A split of a fixed pair dataset written by :func:`write_pair_dataset`.

    Items are ``(input, target)`` float32 tensors of shape ``(1, h, w)``; uint8 inputs (the
    paper's format) are divided by 255. The file is opened lazily in each process, so the
    dataset works with DataLoader workers.

    Parameters
    ----------
    path : path
        The ``.h5`` file.
    split : {"train", "validation"}
    augment : bool
        Random flips and transposition, drawn from torch's generator (reproducible under
        ``torch.manual_seed`` and DataLoader worker seeding).
    """

    def __init__(self, path: str | os.PathLike, split: str = "train", *,
                 augment: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"pair dataset {self.path} does not exist")
        try:
            with h5py.File(self.path, "r") as h5:
                if h5.attrs.get("format") != PAIRS_FORMAT:
                    raise DatasetError(f"{self.path} is not a {PAIRS_FORMAT!r} file")
                if not bool(h5.attrs.get("complete", False)):
                    raise DatasetError(f"{self.path} is incomplete (its writer did not finish)")
                if split not in h5:
                    raise DatasetError(f"{self.path} has no split {split!r}; it has {list(h5)}")
                self._length = int(h5[split]["input"].shape[0])
                self.input_format = str(h5.attrs["input_format"])
                self.attrs = dict(h5.attrs)
        except OSError as exc:
            raise DatasetError(f"cannot read {self.path}: {exc}") from exc
        self.split = split
        self.augment = augment
        self._h5: h5py.File | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return self._length

    def _group(self) -> h5py.Group:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5[self.split]

    def meta(self) -> dict[str, np.ndarray]:
        """The split's metadata columns."""
        group = self._group()["meta"]
        return {k: group[k].asstr()[()] if h5py.check_string_dtype(group[k].dtype) else group[k][()]
                for k in group}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self._length <= i < self._length:
            raise IndexError(f"index {i} out of range for {self._length} pairs")
        group = self._group()
        x = group["input"][i]
        y = group["target"][i]
        x = x.astype(np.float32) / 255 if x.dtype == np.uint8 else x.astype(np.float32)
        if self.augment:
            code = int(torch.randint(8, (1,)))
            x, y = _flip(x, code), _flip(y, code)
        return (torch.from_numpy(np.ascontiguousarray(x))[None],
                torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))[None])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_pid"] = None
        return state
