"""A FIFO of frames between the RunEngine's thread and the processing worker.

``put`` never blocks: up to ``maxsize`` items wait in memory; beyond that, items are spooled
to local disk (frames as ``.npy``, references as JSON) and read back in order when the worker
catches up. Once anything is on disk, newer items go there too, so the order is kept.
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .readers import FrameRef, HDF5FrameRef

__all__ = ["FrameItem", "Inbox", "END"]

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
        self.max_depth = 0  #: deepest the queue (memory + disk) has been

    def __len__(self) -> int:
        with self._cond:
            return len(self._memory) + len(self._disk)

    def put(self, item) -> None:
        with self._cond:
            if item is END or (not self._disk and len(self._memory) < self.maxsize):
                if item is END and self._disk:
                    self._disk.append(self._write(item))
                else:
                    self._memory.append(item)
            else:
                self._disk.append(self._write(item))
                self.spooled += 1
            self.max_depth = max(self.max_depth, len(self._memory) + len(self._disk))
            self._cond.notify()

    def get(self, timeout: float | None = None):
        """Next item in arrival order; raises TimeoutError when none came within ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._memory or self._disk, timeout):
                raise TimeoutError
            if self._memory:
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
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, meta=json.dumps(meta),
                 frame=np.asarray(frame) if frame is not None else np.zeros(0))
        os.replace(tmp, path)
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
            ref = HDF5FrameRef(ref["path"], ref["dataset"], ref["index"])
            frame = None
        return FrameItem(meta["index"], meta["omega"], meta["exposure"], frame, ref)
