"""Training batches from :mod:`labdct_live.training`, indexed by step so that resume is exact.

The training loop asks for the batch of step ``k``. Two sources:

* on the fly (:func:`on_the_fly_batches`): crops synthesised from a projection cache by
  :func:`labdct_live.training.crops.generate_crops`. The stream is restarted from a seed derived
  from ``(seed, chunk)`` every ``chunk_steps`` steps (:class:`ChunkedBatches`); with
  ``chunk_steps`` equal to the validation interval, a run resumed from its last checkpoint
  draws exactly the batches the uninterrupted run would have drawn. Validation batches come
  from projections held out of training (:func:`labdct_live.training.torchdata.split_projections`).
* on the fly, broadened (:func:`broad_batches`): each batch mixes those crops with crops of
  random instruments (:func:`labdct_live.training.broad.broad_crops`), a share
  ``broad_share`` of every batch, training and validation alike.
* a fixed dataset file (:func:`fixed_dataset_batches`): the ``train`` split of a
  :func:`labdct_live.training.torchdata.write_pair_dataset` file, reshuffled each epoch by a seed
  derived from ``(seed, epoch)``; validation on its ``validation`` split.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from labdct_live.training.cache import ProjectionCache
from labdct_live.training.crops import CropSettings, generate_crops
from labdct_live.training.synthesis import SynthesisConfig
from labdct_live.training.torchdata import PairDataset, split_projections

__all__ = ["ChunkedBatches", "broad_batches", "fixed_dataset_batches", "on_the_fly_batches"]

Batch = tuple[np.ndarray, np.ndarray]


class ChunkedBatches:
    """``step -> batch`` from a stream that is restarted every ``chunk_steps`` steps.

    Parameters
    ----------
    make_stream : callable
        ``chunk index -> iterator of batches``; must be deterministic in the index.
    chunk_steps : int
        Steps per chunk.
    prefetch : int
        Batches made ahead by a background thread (0: made on demand). Synthesis in numpy
        and scipy then overlaps with the network's step in torch; the batches are the same.

    Notes
    -----
    Consecutive steps are served from one stream; a jump (e.g. resuming mid-chunk) restarts
    the chunk's stream and skips to the step, so the batch of a step never depends on the
    order of calls.
    """

    def __init__(self, make_stream: Callable[[int], Iterator[Batch]], chunk_steps: int,
                 prefetch: int = 0):
        if chunk_steps < 1:
            raise ValueError(f"chunk_steps must be >= 1, got {chunk_steps}")
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.make_stream = make_stream
        self.chunk_steps = int(chunk_steps)
        self.prefetch = int(prefetch)
        self._stream: Iterator[Batch] | None = None
        self._next_step: int | None = None

    def _open(self, chunk: int, offset: int) -> Iterator[Batch]:
        stream = islice(self.make_stream(chunk), offset, self.chunk_steps)
        return _Prefetcher(stream, self.prefetch) if self.prefetch else stream

    def __call__(self, step: int) -> Batch:
        chunk, offset = divmod(int(step), self.chunk_steps)
        if self._next_step != step or offset == 0:
            self.close()
            self._stream = self._open(chunk, offset)
        self._next_step = step + 1
        return next(self._stream)

    def close(self) -> None:
        """Stop the background thread, if any."""
        if isinstance(self._stream, _Prefetcher):
            self._stream.close()
        self._stream = None


class _Prefetcher:
    """Iterate ``source`` in a daemon thread, ``size`` items ahead; errors re-raised here."""

    _END = object()

    def __init__(self, source: Iterator, size: int):
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(source,), daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, source: Iterator) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(exc)

    def __iter__(self) -> _Prefetcher:
        return self

    def __next__(self):
        item = self._queue.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self, timeout: float = 60.0) -> None:
        """Stop the thread; it finishes the item in hand first (bounded wait: it is a daemon)."""
        self._stop.set()
        self._thread.join(timeout)


def _batched(crops: Iterator[tuple], batch_size: int) -> Iterator[Batch]:
    while True:
        items = [next(crops) for _ in range(batch_size)]
        yield np.stack([x for x, *_ in items]), np.stack([y for _, y, *_ in items])


def on_the_fly_batches(
    cache: str | os.PathLike,
    *,
    batch_size: int = 4,
    crop_size: int = 256,
    val_batches: int = 16,
    validation_fraction: float = 0.15,
    chunk_steps: int = 250,
    prefetch: int = 2,
    seed: int = 0,
    synthesis: Any = None,
) -> tuple[ChunkedBatches, list[Batch], dict]:
    """Unlimited synthetic training batches and a fixed validation set from a projection cache.

    Parameters
    ----------
    cache : path-like
        A projection cache (:func:`labdct_live.training.cache.build_projection_cache`).
    batch_size, crop_size : int
        Crops per batch and crop side (pixels).
    val_batches : int
        Validation batches (from held-out projections).
    validation_fraction : float
        Share of the cache's projections held out for validation.
    chunk_steps : int
        Restart interval of the training stream (use the validation interval).
    prefetch : int
        Training batches synthesised ahead in a background thread.
    seed : int
    synthesis : labdct_live.training.synthesis.SynthesisConfig, optional

    Returns
    -------
    train : ChunkedBatches
        ``step -> (inputs, targets)``, arrays of shape ``(batch_size, crop, crop)``.
    validation : list of (inputs, targets)
    recipe : dict
        The data recipe for checkpoints.
    """

    cache = ProjectionCache(cache)
    config = synthesis or SynthesisConfig()
    crops = CropSettings(size=crop_size)
    train_idx, val_idx = split_projections(cache, validation_fraction, seed)
    if not val_idx:
        raise ValueError("validation_fraction must hold out at least one projection")

    def stream(chunk: int) -> Iterator[Batch]:
        rng = np.random.default_rng([seed, 5, chunk])
        return _batched(generate_crops(cache, rng, config=config, crops=crops,
                                       projections=train_idx), batch_size)

    val_stream = _batched(generate_crops(cache, np.random.default_rng([seed, 6]), config=config,
                                         crops=crops, projections=val_idx), batch_size)
    validation = list(islice(val_stream, val_batches))
    recipe = {
        "kind": "on-the-fly",
        "cache": str(Path(cache.directory).resolve()),
        "acquisitions": [a["name"] for a in cache.index["acquisitions"]],
        "n_projections": len(cache),
        "validation_projections": val_idx,
        "synthesis": config.to_dict(),
        "crops": asdict(crops),
        "batch_size": batch_size,
        "val_batches": val_batches,
        "chunk_steps": chunk_steps,
        "seed": seed,
    }
    return ChunkedBatches(stream, chunk_steps, prefetch), validation, recipe


def _mixed(first: Iterator[tuple], second: Iterator[tuple], batch_size: int,
           n_second: int) -> Iterator[Batch]:
    """Batches of ``batch_size - n_second`` crops of ``first`` then ``n_second`` of ``second``."""
    while True:
        items = ([next(first) for _ in range(batch_size - n_second)]
                 + [next(second) for _ in range(n_second)])
        yield np.stack([x for x, *_ in items]), np.stack([y for _, y, *_ in items])


def broad_batches(
    cache: str | os.PathLike,
    broad_cache: str | os.PathLike,
    *,
    broad_share: float = 0.5,
    batch_size: int = 8,
    crop_size: int = 256,
    val_batches: int = 16,
    validation_fraction: float = 0.15,
    chunk_steps: int = 250,
    prefetch: int = 2,
    seed: int = 0,
    synthesis: Any = None,
    ranges: Any = None,
) -> tuple[ChunkedBatches, list[Batch], dict]:
    """:func:`on_the_fly_batches` of ``cache`` mixed with crops of random instruments.

    Parameters
    ----------
    cache : path-like
        The paper's projection cache (crops by Eq. 1-2, as the shipped model was trained).
    broad_cache : path-like
        Projections of :func:`labdct_live.training.broad.broad_acquisitions`.
    broad_share : float
        Share of each batch from ``broad_cache`` (rounded to whole crops).
    ranges : labdct_live.training.broad.BroadRanges, optional
        Detector and background ranges of the random instruments.
    batch_size, crop_size, val_batches, validation_fraction, chunk_steps, prefetch, seed, synthesis
        As in :func:`on_the_fly_batches`.

    Returns
    -------
    train, validation, recipe
        As :func:`on_the_fly_batches`.
    """
    from labdct_live.training.broad import BroadRanges, broad_crops

    if not 0 <= broad_share <= 1:
        raise ValueError(f"broad_share must be in [0, 1], got {broad_share!r}")
    paper, broad = ProjectionCache(cache), ProjectionCache(broad_cache)
    config, ranges = synthesis or SynthesisConfig(), ranges or BroadRanges()
    crops = CropSettings(size=crop_size)
    n_broad = int(round(broad_share * batch_size))
    splits = [split_projections(c, validation_fraction, seed) for c in (paper, broad)]
    if not all(val for _, val in splits):
        raise ValueError("validation_fraction must hold out at least one projection of each "
                         "cache")

    def streams(rng_paper, rng_broad, which: int) -> Iterator[Batch]:
        return _mixed(generate_crops(paper, rng_paper, config=config, crops=crops,
                                     projections=splits[0][which]),
                      broad_crops(broad, rng_broad, ranges=ranges, crops=crops,
                                  projections=splits[1][which]),
                      batch_size, n_broad)

    def stream(chunk: int) -> Iterator[Batch]:
        return streams(np.random.default_rng([seed, 5, chunk]),
                       np.random.default_rng([seed, 8, chunk]), 0)

    validation = list(islice(streams(np.random.default_rng([seed, 6]),
                                     np.random.default_rng([seed, 9]), 1), val_batches))
    recipe = {
        "kind": "broad",
        "cache": str(Path(paper.directory).resolve()),
        "broad_cache": str(Path(broad.directory).resolve()),
        "acquisitions": [a["name"] for a in paper.index["acquisitions"]],
        "broad_acquisitions": len(broad.index["acquisitions"]),
        "n_projections": len(paper), "n_broad_projections": len(broad),
        "validation_projections": splits[0][1], "broad_validation_projections": splits[1][1],
        "synthesis": config.to_dict(), "broad_ranges": ranges.to_dict(),
        "broad_share": n_broad / batch_size, "crops": asdict(crops),
        "batch_size": batch_size, "val_batches": val_batches, "chunk_steps": chunk_steps,
        "seed": seed,
    }
    return ChunkedBatches(stream, chunk_steps, prefetch), validation, recipe


def fixed_dataset_batches(
    path: str | os.PathLike,
    *,
    batch_size: int = 4,
    val_batches: int | None = None,
    seed: int = 0,
) -> tuple[Callable[[int], Batch], list[Batch], dict]:
    """Training and validation batches from a fixed pair-dataset file.

    Parameters
    ----------
    path : path-like
        An HDF5 file written by :func:`labdct_live.training.torchdata.write_pair_dataset`.
    batch_size : int
    val_batches : int, optional
        Use only the first this many validation batches (all by default).
    seed : int
        Seed of the per-epoch shuffling.

    Returns
    -------
    train, validation, recipe
        As :func:`on_the_fly_batches`.
    """

    train_set = PairDataset(path, "train")
    val_set = PairDataset(path, "validation")
    if len(train_set) < batch_size:
        raise ValueError(f"{path}: {len(train_set)} training pairs, fewer than batch_size")
    if len(val_set) == 0:
        raise ValueError(f"{path} has an empty validation split; write it with a validation "
                         "fraction > 0")
    n = len(train_set)
    orders: dict[int, np.ndarray] = {}

    def batch(step: int) -> Batch:
        items = []
        for position in range(step * batch_size, (step + 1) * batch_size):
            epoch, index = divmod(position, n)
            if epoch not in orders:
                orders.clear()  # one epoch's order at a time
                orders[epoch] = np.random.default_rng([seed, 7, epoch]).permutation(n)
            items.append(train_set[int(orders[epoch][index])])
        return (np.stack([x[0].numpy() for x, _ in items]),
                np.stack([y[0].numpy() for _, y in items]))

    validation = []
    for start in range(0, len(val_set), batch_size):
        items = [val_set[i] for i in range(start, min(start + batch_size, len(val_set)))]
        validation.append((np.stack([x[0].numpy() for x, _ in items]),
                           np.stack([y[0].numpy() for _, y in items])))
    if val_batches is not None:
        validation = validation[:val_batches]
    attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in train_set.attrs.items()
             if isinstance(v, (str, int, float, bool, np.generic))}
    recipe = {"kind": "fixed", "path": str(Path(path).resolve()), "n_train": n,
              "n_validation": len(val_set), "batch_size": batch_size, "seed": seed,
              "attributes": attrs}
    return batch, validation, recipe
