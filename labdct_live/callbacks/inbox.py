"""A FIFO of frames between the RunEngine's thread and the processing worker.

``put`` never blocks: up to ``maxsize`` items wait in memory; beyond that, items are spooled
to local disk (frames as ``.npy``, references as JSON) and read back in order when the worker
catches up. Once anything is on disk, newer items go there too, so the order is kept.

A spool that cannot be written (disk full, read-only) loses nothing: the item stays in
memory, the error is logged once and counted in :attr:`Inbox.spool_errors`, and the order is
then kept only as far as the processing needs it (the end marker comes last).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labdct_live.callbacks.readers import FrameRef, frame_ref_from_dict
from labdct_live.io.output import atomic_file

__all__ = ["FrameItem", "Inbox", "END"]

logger = logging.getLogger(__name__)

END = object()  #: sentinel: the run has stopped


@dataclass
class FrameItem:
    """One frame to process: its scan index, rotation angle, exposure and pixels or reference."""

    index: int
    omega: float
    exposure: float
    frame: np.ndarray | None = None
    ref: FrameRef | None = None

    def load(self) -> np.ndarray:
        return self.frame if self.frame is not None else self.ref.load()


class Inbox:
    """Bounded in-memory queue with an unbounded, ordered disk overflow."""

    def __init__(self, maxsize: int, spool_dir: str | os.PathLike):
        if maxsize < 1:
            raise ValueError(f"queue size must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self.spool_dir = Path(spool_dir)
        self._memory: deque = deque()
        self._disk: deque[Path] = deque()
        self._cond = threading.Condition()
        self._counter = 0
        self.spooled = 0  #: items that went through the disk
        self.spool_errors = 0  #: items kept in memory because the spool could not be written
        self.max_depth = 0  #: deepest the queue (memory + disk) has been

    def __len__(self) -> int:
        with self._cond:
            return len(self._memory) + len(self._disk)

    def put(self, item) -> None:
        """Queue ``item`` (a :class:`FrameItem` or :data:`END`); never blocks, never raises."""
        with self._cond:
            if not self._disk and (item is END or len(self._memory) < self.maxsize):
                self._memory.append(item)
            else:
                try:
                    self._disk.append(self._write(item))
                    self.spooled += item is not END
                except OSError as exc:  # disk full or read-only: keep it in memory
                    self.spool_errors += 1
                    if self.spool_errors == 1:
                        logger.error("cannot spool frames to %s (%s); keeping them in memory",
                                     self.spool_dir, exc)
                    self._memory.append(item)
            self.max_depth = max(self.max_depth, len(self._memory) + len(self._disk))
            self._cond.notify()

    def get(self, timeout: float | None = None):
        """Next item in arrival order (:data:`END` last); raises TimeoutError when none came
        within ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._memory or self._disk, timeout):
                raise TimeoutError
            if self._memory and not (self._memory[0] is END and self._disk):
                return self._memory.popleft()
            path = self._disk.popleft()
        return self._read(path)

    # ------------------------------------------------------------------- disk format
    def _write(self, item) -> Path:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._counter += 1
        path = self.spool_dir / f"in_{self._counter:07d}.npz"
        if item is END:
            meta, frame = {"end": True}, None
        else:
            frame, ref = item.frame, None
            if frame is None:
                try:
                    ref = item.ref.to_dict()
                except TypeError:  # a reference that only lives in memory: keep the pixels
                    frame = item.load()
            meta = {"index": item.index, "omega": item.omega, "exposure": item.exposure,
                    "ref": ref}
        with atomic_file(path) as tmp, open(tmp, "wb") as fh:  # no partial file is left
            np.savez(fh, meta=json.dumps(meta),
                     frame=np.asarray(frame) if frame is not None else np.zeros(0))
        return path

    @staticmethod
    def _read(path: Path):
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            frame = z["frame"]
        path.unlink()
        if meta.get("end"):
            return END
        ref = meta.get("ref")
        if ref is not None:
            ref, frame = frame_ref_from_dict(ref), None
        return FrameItem(meta["index"], meta["omega"], meta["exposure"], frame, ref)
