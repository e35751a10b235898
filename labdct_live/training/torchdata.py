"""Training data for the U-Net: a projection cache, an unlimited pair stream, fixed datasets.

* :func:`build_projection_cache` simulates projections once and stores their noise-free
  spot image and spot labels (one compressed ``.npz`` per projection plus ``index.json``),
  so training never waits on the simulator; :class:`ProjectionCache` reads it.
* :func:`generate_crops` turns cached projections into an endless, seeded sequence of
  (noisy input, target) crops: every frame gets a fresh background, background amplitude,
  intensity scale and noise (:mod:`labdct_live.training.synthesis`, Eq. 1-2); crops over-sample
  spot-containing regions because most of a frame is empty. Only the crop's pixels are
  rendered, plus a coarse grid of the whole frame for the normalisation statistics, which
  therefore match :func:`~labdct_live.training.synthesis.normalize_frame` of the full frame.
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
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from labdct_live import __version__
from labdct_live.io.output import atomic_file
from labdct_live.training.cache import DatasetError, ProjectionCache
from labdct_live.training.crops import CropSettings, _flip, generate_crops
from labdct_live.training.synthesis import (
    SynthesisConfig,
)

__all__ = [
    "split_projections",
    "SyntheticPairStream",
    "write_pair_dataset",
    "PairDataset",
]


PAIRS_FORMAT = "labdct-live training pairs"


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
    >>> from labdct_live.acquisition.detector import scaled_geometry
    >>> from labdct_live.training import Acquisition, CropSettings, build_projection_cache
    >>> from labdct_live.simulation.presets import preset
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
    with atomic_file(path) as tmp:
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
