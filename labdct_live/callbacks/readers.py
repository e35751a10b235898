"""Reading detector frames from what bluesky documents point at.

- embedded: the image is in the event itself;
- Resource/Datum (ophyd v1 area detectors): spec ``AD_HDF5``/``AD_HDF5_SWMR`` and the
  ``point_number`` of the datum;
- StreamResource/StreamDatum (modern detectors): an HDF5 ``uri`` + ``dataset`` and a frame
  index.

Frames are read lazily by the processing worker, never in the RunEngine's thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import h5py
import numpy as np

__all__ = ["FrameRef", "HDF5FrameRef", "uri_to_path"]

logger = logging.getLogger(__name__)


def uri_to_path(uri: str) -> Path:
    """Local path of a ``file://`` URI (``file://localhost/x``, ``file:///x``) or a plain path."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path) if parsed.scheme else uri)
    raise ValueError(f"cannot read frames from {uri!r}: only local files are supported")


class FrameRef:
    """Something the worker can turn into a frame with :meth:`load`."""

    def load(self) -> np.ndarray:
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError


@dataclass
class HDF5FrameRef(FrameRef):
    """Frame ``index`` of dataset ``dataset`` in the HDF5 file ``path``."""

    path: str
    dataset: str
    index: int
    attempts: int = 20  # the writer may still be flushing the frame when we arrive

    def load(self) -> np.ndarray:
        last: Exception | None = None
        for attempt in range(self.attempts):
            try:
                with h5py.File(self.path, "r", swmr=True) as f:
                    data = f[self.dataset]
                    if hasattr(data, "refresh"):
                        data.refresh()
                    if self.index < data.shape[0]:
                        return data[self.index]
                    last = IndexError(f"{self.path}:{self.dataset} has {data.shape[0]} frames, "
                                      f"frame {self.index} requested")
            except (OSError, KeyError) as exc:
                last = exc
            time.sleep(0.05 * (attempt + 1))
        raise OSError(f"cannot read frame {self.index} of {self.path}:{self.dataset}: {last}")

    def to_dict(self) -> dict:
        return {"kind": "hdf5", "path": self.path, "dataset": self.dataset, "index": self.index}

    @classmethod
    def from_stream_resource(cls, resource: dict, index: int) -> "HDF5FrameRef":
        params = resource.get("parameters", {})
        dataset = params.get("dataset") or params.get("path") or "/entry/data/data"
        return cls(str(uri_to_path(resource["uri"])), dataset, int(index))

    @classmethod
    def from_resource_datum(cls, resource: dict, datum: dict) -> "HDF5FrameRef":
        spec = resource.get("spec", "")
        if spec not in ("AD_HDF5", "AD_HDF5_SWMR", "AD_HDF5_SWMR_STREAM"):
            raise ValueError(f"unsupported Resource spec {spec!r} (supported: AD_HDF5*)")
        path = Path(resource.get("root", "/")) / resource["resource_path"]
        kwargs = datum.get("datum_kwargs", {})
        dataset = resource.get("resource_kwargs", {}).get("dataset", "/entry/data/data")
        return cls(str(path), dataset, int(kwargs.get("point_number", kwargs.get("index", 0))))


@dataclass
class CallableFrameRef(FrameRef):
    """Frame ``index`` from a callable (e.g. a tiled array during replay)."""

    source: object
    index: int

    def load(self) -> np.ndarray:
        return np.asarray(self.source(self.index))

    def to_dict(self) -> dict:
        raise TypeError("frames read through a callable cannot be spooled as references")
