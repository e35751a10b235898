"""Pieces every export format shares: checking the binary frames against the metadata, progress,
and the JSON sidecar.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from labdct_live import __version__
from labdct_live.export.masks import MaskFolder
from labdct_live.export.metadata import ExportError
from labdct_live.io.frames import FrameStack, check_frame

if TYPE_CHECKING:
    from labdct_live.export.metadata import ExportMetadata

__all__ = []


def _is_pair(item: Any) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and np.ndim(item[0]) == 0


def _indexed(frames: Any) -> Iterator[tuple[int, Any]]:
    """``(index, frame)`` from an array, a sequence of frames or ``(index, frame)`` pairs."""
    if isinstance(frames, np.ndarray):
        yield from enumerate(frames)
        return
    for position, item in enumerate(frames):
        if _is_pair(item):
            index, frame = item
            yield int(index), frame
        else:
            yield position, item


def _as_binary(frame: np.ndarray, where: str) -> np.ndarray:
    """The frame as uint8 {0, 1}, or an ExportError naming the values that are not binary."""
    if frame.dtype == bool:
        return frame.view(np.uint8)
    if frame.dtype.kind in "ui":
        if frame.min() >= 0 and frame.max() <= 1:
            return frame.astype(np.uint8, copy=False)
    elif frame.dtype.kind == "f":
        if np.all((frame == 0) | (frame == 1)):
            return frame.astype(np.uint8)
    else:
        raise ExportError(f"{where}: pixel type {frame.dtype} is not a binary mask; pass uint8 "
                          "or bool masks")
    values = np.unique(frame)
    shown = ", ".join(str(v) for v in values[:6]) + (", ..." if values.size > 6 else "")
    raise ExportError(f"{where} is not binary: it holds the values {shown}; pass masks of 0 "
                      "and 1 (e.g. mask > 0). Masks saved as 0/255 images are read by "
                      "open_mask_folder")


def _check_count(frames: Any, n: int, what: str) -> None:
    """Fail before any output is made when the number of frames is known up front."""
    if isinstance(frames, np.ndarray) and frames.ndim != 3:
        raise ExportError(f"{what} must be an (n, rows, cols) array, got shape {frames.shape}")
    if isinstance(frames, (np.ndarray, Sequence, MaskFolder, FrameStack)) and len(frames) != n:
        raise ExportError(f"{what} holds {len(frames)} frames but the metadata lists {n} "
                          "omegas; give one omega per frame")


def _checked(frames: Any, meta: ExportMetadata, what: str = "binary_frames",
             binary: bool = True) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, frame)`` after checking index, shape and (if ``binary``) values.

    Raises ExportError for an index outside ``0..n-1``, a repeated or missing index, a frame
    whose shape differs from the detector's, or a non-binary mask.
    """
    n = meta.n_frames
    shape = meta.geometry.detector_shape
    _check_count(frames, n, what)
    seen = np.zeros(n, dtype=bool)
    for index, frame in _indexed(frames):
        where = f"{what}[{index}]"
        if not 0 <= index < n:
            raise ExportError(f"{where}: frame index {index} is outside 0..{n - 1} (the "
                              f"metadata lists {n} omegas)")
        if seen[index]:
            raise ExportError(f"{where}: frame {index} was given twice")
        frame = np.asarray(frame)
        if frame.shape != shape:
            raise ExportError(f"{where} has shape {frame.shape} but the geometry's detector is "
                              f"{shape}; all frames must match geometry.detector_shape")
        frame = _as_binary(frame, where) if binary else check_frame(frame, where)
        seen[index] = True
        yield index, frame
    if not seen.all():
        missing = np.flatnonzero(~seen)
        listed = ", ".join(map(str, missing[:8])) + (", ..." if missing.size > 8 else "")
        raise ExportError(f"{what}: {missing.size} of {n} frames are missing (index {listed}); "
                          "the metadata lists one omega per frame")


def _progress(items: Iterable, n: int, desc: str, show: bool) -> Iterable:
    return tqdm(items, total=n, desc=desc, unit="frame", disable=not show)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=_json_default)


def _uniform_step(omegas: np.ndarray) -> float | None:
    """The rotation step if the omegas are equally spaced, else None."""
    if omegas.size < 2:
        return None
    steps = np.diff(omegas)
    return float(steps[0]) if np.allclose(steps, steps[0], rtol=0, atol=1e-6) else None


def _common_block(meta: ExportMetadata, fmt: str) -> dict:
    """What every sidecar carries: scan, sample, provenance."""
    return {
        "format": f"labdct-live {fmt} export",
        "version": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "software": {"labdct_live": __version__},
        "n_frames": meta.n_frames,
        "omega_deg": meta.omegas.tolist(),
        "omega_step_deg": _uniform_step(meta.omegas),
        "exposure_s": None if meta.exposure is None else meta.exposure.tolist(),
        "geometry": meta.geometry.to_dict(),
        "sample": meta.sample,
        "processing": meta.processing,
        "raw_frame_names": None if meta.frame_names is None else list(meta.frame_names),
        "extra": meta.extra,
    }
