"""Reading detector frames from what bluesky documents point at.

- embedded: the image is in the event itself;
- Resource/Datum (ophyd v1 area detectors): spec ``AD_HDF5``/``AD_HDF5_SWMR`` and the
  ``point_number`` of the datum;
- StreamResource/StreamDatum (modern detectors): an HDF5 ``uri`` + ``dataset`` and a frame
  index;
- the raw run in the catalog (:class:`CatalogRunFrames`), for frames whose documents never
  arrived whole.

Frames are read lazily by the processing worker, never in the RunEngine's thread. An event
whose image is unusable (None, an unknown datum, a ragged list) becomes an
:class:`ErrorFrameRef`, so that the frame gets a row with the reason instead of vanishing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import h5py
import numpy as np

from labdct_live.io.frames import FrameReadError

__all__ = ["FrameRef", "HDF5FrameRef", "ErrorFrameRef", "CallableFrameRef", "CatalogRunFrames",
           "frame_ref_from_dict", "uri_to_path"]

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
    def from_stream_resource(cls, resource: dict, index: int) -> HDF5FrameRef:
        params = resource.get("parameters", {})
        dataset = params.get("dataset") or params.get("path") or "/entry/data/data"
        return cls(str(uri_to_path(resource["uri"])), dataset, int(index))

    @classmethod
    def from_resource_datum(cls, resource: dict, datum: dict) -> HDF5FrameRef:
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


@dataclass
class ErrorFrameRef(FrameRef):
    """A frame that cannot be had: :meth:`load` raises :class:`FrameReadError` with ``reason``."""

    reason: str

    def load(self) -> np.ndarray:
        raise FrameReadError(self.reason)

    def to_dict(self) -> dict:
        return {"kind": "error", "reason": self.reason}


def frame_ref_from_dict(ref: dict) -> FrameRef:
    """Inverse of ``FrameRef.to_dict`` (the inbox's disk spool)."""
    if ref.get("kind") == "error":
        return ErrorFrameRef(str(ref["reason"]))
    return HDF5FrameRef(ref["path"], ref["dataset"], int(ref["index"]))


class CatalogRunFrames:
    """Frames, rotation angles and exposures of a raw run's stream in the tiled catalog.

    The raw run may still be arriving (its writer runs in another thread or process), so
    :meth:`read` waits, up to ``timeout`` seconds in all, for the frame to be there.

    Parameters
    ----------
    client : tiled client root
    run_uid, stream : str
        The raw run and its event stream (``"primary"``).
    image_key, rotation_key, exposure_key : str or None
        Data keys of the frames and of the per-frame rotation angle and exposure.
    timeout : float
        Seconds to wait in all for frames not yet in the catalog.
    """

    def __init__(self, client, run_uid: str, stream: str, image_key: str,
                 rotation_key: str | None, exposure_key: str | None, timeout: float = 60.0):
        self.client = client
        self.run_uid, self.stream = run_uid, stream
        self.keys = {"image": image_key, "omega": rotation_key, "exposure": exposure_key}
        self.deadline = time.monotonic() + timeout

    def _node(self):
        return self.client[self.run_uid][self.stream]

    def read(self, index: int) -> tuple[np.ndarray, float, float]:
        """``(frame, omega, exposure)`` of frame ``index`` (0-based); NaN for an angle or
        exposure the stream does not hold. Raises ``LookupError`` when the frame is not
        in the catalog in time."""
        while True:
            node = self._node()  # anew: the structure grows while the run is written
            images = node[self.keys["image"]]
            if images.shape[0] > index:
                break
            if time.monotonic() > self.deadline:
                raise LookupError(f"the raw run {self.run_uid} has {images.shape[0]} frames in "
                                  f"the catalog; frame {index} is not there")
            time.sleep(0.5)
        values = {}
        for name in ("omega", "exposure"):
            key = self.keys[name]
            values[name] = float(node[key][index]) if key and key in node else float("nan")
        return np.asarray(images[index]), values["omega"], values["exposure"]
