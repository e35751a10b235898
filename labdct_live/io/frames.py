"""Reading folders of detector frames and writing segmentation output without half-done files.

A *frame folder* holds TIFF files (``*.tif``, ``*.tiff``), each either one 2-D frame or a
stack of frames ``(n, rows, cols)``; the folder's frames are the files' frames in natural
name order (``proj_2.tif`` before ``proj_10.tif``). Any integer or floating-point pixel type
is accepted; every frame must have the same ``(rows, cols)``.

:func:`open_frame_folder` checks every file's header up front (so a bad file is reported
before any work starts) and returns a :class:`FrameStack` that reads frames lazily: a
181-frame scan of 2032² pixels does not have to fit in memory.

Output is written through :class:`AtomicOutputDir`: files go to a hidden sibling directory
that is renamed to its final name only when everything has been written, so an interrupted
or failed run never leaves a folder that looks complete. Every folder it writes holds a
marker file (:data:`OUTPUT_MARKER`); ``overwrite`` replaces only such a folder, and an output
folder that is, contains or lies inside one of the run's inputs is refused before anything
is written (:func:`check_output_dir`), so no option combination can delete the user's data.
Single files go through :func:`atomic_file` (temporary name, then rename).

:func:`command_context` names the command on whose behalf output is written (recorded in the
marker) and collects the run's output paths, so that :func:`describe_os_error` can turn an
``OSError`` (read-only file system, disk full, a path under a file) into one sentence that
names the output concerned.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

__all__ = [
    "TIFF_SUFFIXES",
    "FrameReadError",
    "EmptyFolderError",
    "FrameStack",
    "open_frame_folder",
    "read_frame",
    "check_frame",
    "natural_key",
]

log = logging.getLogger(__name__)


#: File name endings read as frames (case-insensitive).
TIFF_SUFFIXES = (".tif", ".tiff")


class FrameReadError(ValueError):
    """A frame file that cannot be used: unreadable, wrong pixel type or shape, NaN pixels."""


class EmptyFolderError(FileNotFoundError):
    """A frame folder that does not exist or holds no TIFF frames."""


def natural_key(name: str) -> list:
    """Sort key putting ``proj_2`` before ``proj_10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def check_frame(frame: np.ndarray, where: str = "frame",
                shape: tuple[int, int] | None = None) -> np.ndarray:
    """Check that an array is a usable 2-D frame and return it.

    The one frame check of the package: readers, the live processor, the synthesis and the
    background extraction all use it.

    Parameters
    ----------
    frame : ndarray
        The frame to check.
    where : str
        How to name the frame in error messages (e.g. its file name).
    shape : tuple of int, optional
        The shape the frame must have.

    Returns
    -------
    ndarray
        ``frame`` unchanged.

    Raises
    ------
    FrameReadError
        If the frame is not 2-D, is empty, has a non-numeric or boolean/complex pixel type,
        or holds NaN or infinite values, or has another shape than ``shape``.
    """
    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise FrameReadError(
            f"{where}: expected a 2-D grayscale frame (rows, cols), got shape {frame.shape}; "
            "convert colour images to grayscale"
        )
    if frame.size == 0:
        raise FrameReadError(f"{where}: the frame is empty (shape {frame.shape})")
    if shape is not None and frame.shape != tuple(shape):
        raise FrameReadError(f"{where} has shape {frame.shape}, expected {tuple(shape)}")
    _check_dtype(frame.dtype, where)
    if frame.dtype.kind == "f" and not np.isfinite(frame).all():
        n_bad = int(frame.size - np.count_nonzero(np.isfinite(frame)))
        raise FrameReadError(
            f"{where}: {n_bad} pixel(s) are NaN or infinite; replace them (e.g. by the local "
            "median) before segmenting"
        )
    return frame


def _check_dtype(dtype: np.dtype, where: str) -> None:
    if dtype.kind not in "uif":
        raise FrameReadError(
            f"{where}: pixel type {dtype} is not supported; frames must hold integer or "
            "floating-point counts (uint16 for raw detector frames)"
        )


def read_frame(path: str | os.PathLike, page: int = 0) -> np.ndarray:
    """Read one frame from a TIFF file and check it with :func:`check_frame`.

    Parameters
    ----------
    path : path-like
        TIFF file.
    page : int
        Frame index inside a multi-frame file.

    Returns
    -------
    ndarray
        The ``(rows, cols)`` frame in its stored pixel type.
    """
    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            n_frames = series.shape[0] if len(series.shape) == 3 else 1
            if not 0 <= page < n_frames:
                raise FrameReadError(f"{path}: has {n_frames} frame(s), asked for frame {page}")
            if len(series.shape) == 2:
                frame = series.asarray()
            elif len(series.pages) == n_frames:  # one page per frame: read only that page
                frame = tif.asarray(key=page, series=0)
            else:  # e.g. a small stack stored as planar samples of one page
                frame = series.asarray()[page]
    except FrameReadError:
        raise
    except Exception as exc:  # tifffile raises many types for a damaged file
        raise FrameReadError(f"{path}: cannot be read as a TIFF image ({exc})") from exc
    return check_frame(frame, where=f"{path}" + (f" frame {page}" if page else ""))


@dataclass(frozen=True)
class FrameStack:
    """The frames of a folder, read on demand.

    Use :func:`open_frame_folder` to create one. Indexing returns a checked frame
    (see :func:`check_frame`).

    Attributes
    ----------
    folder : Path
        The folder.
    files : tuple of Path
        The TIFF files, in frame order.
    frames_per_file : tuple of int
        How many frames each file holds.
    is_stack : tuple of bool
        Whether each file is a 3-D stack (even of one frame) rather than a 2-D image.
    shape : (int, int)
        ``(rows, cols)`` of every frame.
    dtype : numpy.dtype
        Pixel type (the common type if files differ).
    """

    folder: Path
    files: tuple[Path, ...]
    frames_per_file: tuple[int, ...]
    is_stack: tuple[bool, ...]
    shape: tuple[int, int]
    dtype: np.dtype

    @property
    def locations(self) -> list[tuple[Path, int | None]]:
        """``(file, page)`` of every frame, in order; page is None for a 2-D file."""
        return [(f, p if stack else None)
                for f, n, stack in zip(self.files, self.frames_per_file, self.is_stack)
                for p in range(n)]

    @property
    def names(self) -> list[str]:
        """Identifier of every frame: the file name, plus ``#page`` for frames of a stack."""
        return [f.name if p is None else f"{f.name}#{p}" for f, p in self.locations]

    def __len__(self) -> int:
        return sum(self.frames_per_file)

    def __getitem__(self, index: int) -> np.ndarray:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"frame index {index} out of range for {n} frames")
        path, page = self.locations[index % n]
        frame = read_frame(path, page or 0)
        if frame.shape != self.shape:  # header said otherwise: a damaged file
            raise FrameReadError(f"{path}: frame shape {frame.shape} differs from {self.shape}")
        return frame

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def load(self) -> np.ndarray:
        """All frames as one ``(n, rows, cols)`` array (only for stacks that fit in memory)."""
        out = np.empty((len(self),) + self.shape, dtype=self.dtype)
        for i, frame in enumerate(self):
            out[i] = frame
        return out


def open_frame_folder(folder: str | os.PathLike) -> FrameStack:
    """Index the TIFF frames of a folder, checking every file's header.

    Parameters
    ----------
    folder : path-like
        Folder holding ``*.tif`` / ``*.tiff`` files (other files are ignored).

    Returns
    -------
    FrameStack
        Lazily read frames in natural file-name order.

    Raises
    ------
    EmptyFolderError
        If the folder does not exist or holds no TIFF file.
    FrameReadError
        If a file cannot be read, is not grayscale 2-D or 3-D, has an unsupported pixel type,
        or its frame shape differs from the first file's.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EmptyFolderError(f"frame folder {folder} does not exist or is not a folder")
    files = sorted(
        (p for p in folder.iterdir()
         if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in TIFF_SUFFIXES),
        key=lambda p: natural_key(p.name),
    )
    if not files:
        raise EmptyFolderError(
            f"no TIFF frames (*.tif, *.tiff) in {folder}; point to the folder holding the frames"
        )
    shape: tuple[int, int] | None = None
    dtype: np.dtype | None = None
    counts, is_stack = [], []
    for path in files:
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                file_shape, file_dtype = tuple(series.shape), np.dtype(series.dtype)
                axes = series.axes
        except Exception as exc:
            raise FrameReadError(f"{path}: cannot be read as a TIFF image ({exc})") from exc
        _check_dtype(file_dtype, str(path))
        if len(file_shape) == 2:
            n, frame_shape = 1, file_shape
        elif len(file_shape) == 3 and not axes.endswith("S"):  # "YXS" = colour samples
            n, frame_shape = file_shape[0], file_shape[1:]
        else:
            raise FrameReadError(
                f"{path}: shape {file_shape} is not a grayscale frame (rows, cols) or a stack "
                "(frames, rows, cols)"
            )
        if n == 0 or 0 in frame_shape:
            raise FrameReadError(f"{path}: holds no pixels (shape {file_shape})")
        if shape is None:
            shape, dtype = frame_shape, file_dtype
        elif frame_shape != shape:
            raise FrameReadError(
                f"{path}: frame shape {frame_shape} differs from {shape} of {files[0].name}; "
                "all frames of a folder must have the same size"
            )
        if file_dtype != dtype:
            log.info("%s has pixel type %s, the first file %s", path.name, file_dtype, dtype)
            dtype = np.result_type(dtype, file_dtype)
        counts.append(n)
        is_stack.append(len(file_shape) == 3)
    return FrameStack(folder, tuple(files), tuple(counts), tuple(is_stack), shape, dtype)
