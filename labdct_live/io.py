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

import contextlib
import contextvars
import errno
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tifffile

__all__ = [
    "TIFF_SUFFIXES",
    "CommandRun",
    "FrameReadError",
    "EmptyFolderError",
    "FrameStack",
    "open_frame_folder",
    "read_frame",
    "check_frame",
    "write_tiff_atomic",
    "write_mask_tiff",
    "tiff_layout_tags",
    "atomic_file",
    "AtomicOutputDir",
    "OUTPUT_MARKER",
    "OutputFolderError",
    "check_output_dir",
    "check_no_overlap",
    "write_output_marker",
    "make_parent_folder",
    "work_folder",
    "probe_writable",
    "require_free_space",
    "require_hdf5",
    "command_context",
    "describe_os_error",
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


def check_frame(frame: np.ndarray, where: str = "frame") -> np.ndarray:
    """Check that an array is a usable 2-D frame and return it.

    Parameters
    ----------
    frame : ndarray
        The frame to check.
    where : str
        How to name the frame in error messages (e.g. its file name).

    Returns
    -------
    ndarray
        ``frame`` unchanged.

    Raises
    ------
    FrameReadError
        If the frame is not 2-D, is empty, has a non-numeric or boolean/complex pixel type,
        or holds NaN or infinite values.
    """
    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise FrameReadError(
            f"{where}: expected a 2-D grayscale frame (rows, cols), got shape {frame.shape}; "
            "convert colour images to grayscale"
        )
    if frame.size == 0:
        raise FrameReadError(f"{where}: the frame is empty (shape {frame.shape})")
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


# ------------------------------------------------------------------------ command context
@dataclass
class CommandRun:
    """What :func:`command_context` records about the running command.

    Attributes
    ----------
    command : str
        The command name written into output markers (e.g. ``"segment"``).
    outputs : list of (Path, Path or None)
        ``(final path, temporary path)`` of every output started, in order.
    """

    command: str
    outputs: list[tuple[Path, Path | None]] = field(default_factory=list)


_RUN: contextvars.ContextVar[CommandRun | None] = contextvars.ContextVar("labdct_live_run",
                                                                         default=None)


@contextlib.contextmanager
def command_context(command: str) -> Iterator[CommandRun]:
    """Name the command writing output for the duration of the block.

    Parameters
    ----------
    command : str
        Recorded as ``command`` in the marker of every output folder written in the block.

    Yields
    ------
    CommandRun
        Collects the outputs started in the block (for :func:`describe_os_error`).
    """
    run = CommandRun(command)
    token = _RUN.set(run)
    try:
        yield run
    finally:
        _RUN.reset(token)


def _register_output(final: Path, tmp: Path | None) -> None:
    run = _RUN.get()
    if run is not None:
        run.outputs.append((final, tmp))


def _is_within(path: Path, folder: Path) -> bool:
    path, folder = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return path == folder or folder in path.parents


#: errno values that mean "this cannot be written here" whatever the path.
_WRITE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def describe_os_error(exc: OSError, run: CommandRun | None = None) -> str:
    """One sentence for an ``OSError``, naming the path and what the system said.

    A path inside an output's temporary folder is shown under the output's final name. An
    error on (or above) one of the run's outputs, or one that only writing causes (read-only
    file system, disk full, quota), reads ``cannot write PATH: REASON``; others
    ``cannot access PATH: REASON``.

    Parameters
    ----------
    exc : OSError
        The error.
    run : CommandRun, optional
        The command's record (default: the current :func:`command_context`'s).

    Returns
    -------
    str
        A single line.
    """
    run = run or _RUN.get()
    outputs = run.outputs if run is not None else []
    if exc.filename is None:
        if exc.errno in _WRITE_ERRNOS and outputs:  # e.g. ENOSPC inside h5py or write()
            return (f"cannot write {_shown(outputs[-1][0], outputs)}: "
                    f"{os.strerror(exc.errno)}")
        return " ".join(str(exc).split())
    reason = exc.strerror or str(exc)
    path = Path(os.fsdecode(exc.filename))
    writing = exc.errno in _WRITE_ERRNOS or any(
        _inside_temporary(path, final) is not None  # where an output is being built
        or _is_within(path, final) or _is_within(final, path)  # the output or a parent
        for final, _ in outputs)
    return f"cannot {'write' if writing else 'access'} {_shown(path, outputs)}: {reason}"


def _shown(path: Path, outputs: list[tuple[Path, Path | None]]) -> Path:
    """``path`` under its output's final name if it lies in the output's temporary folder."""
    for final, _ in reversed(outputs):
        inner = _inside_temporary(path, final)
        if inner is not None:
            return _shown(final, outputs) / inner  # that output may itself be under another
    return path


def _inside_temporary(path: Path, final: Path) -> Path | None:
    """``path`` relative to a hidden temporary sibling of ``final`` (``.NAME.*``), or None.

    Such siblings are where ``final`` is being built (also by writers with their own
    temporary names, e.g. ``..NAME.x.partial.partial-PID``).
    """
    path, final = Path(os.path.abspath(path)), Path(os.path.abspath(final))
    for folder in (path, *path.parents):
        if (folder.parent == final.parent and folder.name.startswith(".")
                and folder.name.lstrip(".").startswith(f"{final.name}.")):
            return path.relative_to(folder)
    return None


# ---------------------------------------------------------------------------- TIFF output
#: TIFF tag of the image orientation (how a viewer flips/rotates the stored pixels).
ORIENTATION_TAG = 274


def tiff_layout_tags(path: str | os.PathLike | None) -> dict:
    """``tifffile.imwrite`` keyword arguments repeating ``path``'s orientation and resolution.

    A mask or denoised image written with them is shown by a viewer that honours the TIFF
    Orientation tag (274) exactly like the frame it came from.

    Parameters
    ----------
    path : path-like or None
        The input TIFF (its first page is read); None gives ``{}``.

    Returns
    -------
    dict
        Some of ``extratags``, ``resolution``, ``resolutionunit``; empty when the file has
        neither tag or cannot be read.
    """
    if path is None:
        return {}
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            tags = page.tags
            kwargs: dict = {}
            orientation = tags.get(ORIENTATION_TAG)
            if orientation is not None and int(orientation.value) != 1:  # 1 = the default
                kwargs["extratags"] = [(ORIENTATION_TAG, "H", 1, int(orientation.value), True)]
            if tags.get(282) is not None and tags.get(283) is not None:  # X/YResolution
                kwargs["resolution"] = tuple(page.resolution)
                kwargs["resolutionunit"] = int(page.resolutionunit)
            return kwargs
    except Exception as exc:  # noqa: BLE001 - layout tags are a courtesy, never fatal
        log.info("cannot read layout tags of %s (%s); writing without them", path, exc)
        return {}


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` that is renamed to ``path`` when the block succeeds.

    On any exception (including KeyboardInterrupt) the temporary file is removed and
    ``path`` is left as it was, so no truncated file ever carries the final name.

    Parameters
    ----------
    path : path-like
        The file to write; its folder must exist.

    Yields
    ------
    Path
        Where to write.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    _register_output(path, Path(tmp))
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_tiff_atomic(path: str | os.PathLike, data: np.ndarray, **kwargs) -> Path:
    """Write a TIFF under a temporary name in the same folder, then rename it into place.

    ``kwargs`` go to ``tifffile.imwrite`` (e.g. :func:`tiff_layout_tags` of the input).
    """
    path = Path(path)
    with atomic_file(path) as tmp:
        tifffile.imwrite(tmp, data, **kwargs)
    return path


def write_mask_tiff(path: str | os.PathLike, mask: np.ndarray,
                    like: str | os.PathLike | None = None) -> Path:
    """Write a binary mask (or a stack of masks) as uint8 0/255, atomically.

    Parameters
    ----------
    path : path-like
        Destination file.
    mask : ndarray
        Non-zero = spot.
    like : path-like, optional
        The input frame's TIFF: its orientation and resolution tags are repeated
        (:func:`tiff_layout_tags`).
    """
    mask = np.asarray(mask)
    return write_tiff_atomic(path, np.where(mask > 0, np.uint8(255), np.uint8(0)),
                             **tiff_layout_tags(like))


# ------------------------------------------------------------------------ output folders
#: File in every output folder written by :class:`AtomicOutputDir` (JSON: tool, command,
#: version, created): ``overwrite`` replaces only a folder holding it.
OUTPUT_MARKER = ".labdct-live-output"


class OutputFolderError(FileExistsError):
    """An output folder that must not be written: it overlaps an input, or it holds files
    that labdct-live did not write (or any files, without ``overwrite``)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def check_no_overlap(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (),
                     *, nest_in: Iterable[str | os.PathLike | None] = ()) -> None:
    """Refuse an output that is, contains or lies inside one of the inputs.

    Paths are compared after resolving symbolic links, so a link to the input folder is
    the input folder.

    Parameters
    ----------
    out : path-like
        The output folder (or file).
    inputs : iterable of path-like or None
        The command's inputs (folders or files); None entries are skipped.
    nest_in : iterable of path-like or None
        Inputs the output may lie inside (e.g. ``evaluate``'s report folder in PRED); it
        still must not be or contain them.

    Raises
    ------
    OutputFolderError
        Naming the output and the input concerned.
    """
    target = _resolved(out)
    nestable = {_resolved(p) for p in nest_in if p is not None}
    for given in inputs:
        if given is None:
            continue
        source = _resolved(given)
        if target == source:
            raise OutputFolderError(f"output {out} is the input {given}; choose another output "
                                    "folder")
        if target in source.parents:
            raise OutputFolderError(f"output {out} contains the input {given}: writing it "
                                    "would replace the input; choose another output folder")
        if source in target.parents and source not in nestable:
            raise OutputFolderError(f"output {out} lies inside the input {given}; choose an "
                                    "output folder outside it")


def _has_marker(folder: Path) -> bool:
    return (folder / OUTPUT_MARKER).is_file()


def check_output_dir(final: str | os.PathLike,
                     inputs: Iterable[str | os.PathLike | None] = (), *,
                     overwrite: bool = False,
                     nest_in: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Check, before anything is written, that ``final`` may become an output folder.

    Allowed: a path that does not exist, an empty folder, or (with ``overwrite``) a folder
    that labdct-live wrote (it holds :data:`OUTPUT_MARKER`). Refused: a path that is, contains
    or lies inside an input (:func:`check_no_overlap`), an existing file, a non-empty folder
    without ``overwrite``, and any non-empty folder without the marker.

    Parameters
    ----------
    final : path-like
        The output folder.
    inputs, nest_in
        See :func:`check_no_overlap`.
    overwrite : bool
        Whether replacing an earlier output of labdct-live is wanted.

    Returns
    -------
    Path
        ``final`` (the link's target when ``final`` is a symbolic link to a folder).

    Raises
    ------
    OutputFolderError
        With a message saying what to do instead.
    """
    final = Path(final)
    check_no_overlap(final, inputs, nest_in=nest_in)
    if final.is_symlink() and final.is_dir():
        final = _resolved(final)  # replace the folder the link points to, not the link
    if not final.exists():
        if final.is_symlink():
            raise OutputFolderError(f"output {final} is a broken symbolic link; remove it or "
                                    "choose another output folder")
        probe_writable(final)
        return final
    if not final.is_dir():
        raise OutputFolderError(f"output {final} exists and is not a folder")
    probe_writable(final)
    if not any(final.iterdir()):
        return final
    if not overwrite:
        raise OutputFolderError(f"output folder {final} exists and is not empty; choose "
                                "another or pass --overwrite")
    if not _has_marker(final):
        raise OutputFolderError(
            f"output folder {final} is not empty and was not written by labdct-live (no "
            f"{OUTPUT_MARKER} marker): --overwrite only replaces labdct-live's own output "
            "folders; choose another folder or empty this one yourself")
    return final


def write_output_marker(folder: str | os.PathLike, command: str | None = None) -> Path:
    """Write :data:`OUTPUT_MARKER` into ``folder``: this folder is labdct-live's output.

    Parameters
    ----------
    folder : path-like
        An existing folder.
    command : str, optional
        The command recorded (default: the current :func:`command_context`'s, else
        ``"python"`` for library use).

    Returns
    -------
    Path
        The marker file.
    """
    from labdct_live import __version__

    run = _RUN.get()
    command = command or (run.command if run is not None else "python")
    path = Path(folder) / OUTPUT_MARKER
    path.write_text(json.dumps({
        "tool": "labdct-live", "command": command, "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }) + "\n")
    return path


@contextlib.contextmanager
def work_folder(folder: str | os.PathLike,
                inputs: Iterable[str | os.PathLike | None] = (), *,
                nest_in: Iterable[str | os.PathLike | None] = ()) -> Iterator[Path]:
    """Checks and marking for a folder filled over time rather than atomically.

    For commands whose output folder is resumable or grows (``train``'s run folder,
    ``synth``'s pairs and projection cache, ``demo``'s work folder), so it cannot be built
    aside and renamed. On entry: ``folder`` must not be, contain or lie inside an input, not
    be a file, and be writable. On exit (success or not), a folder that was new (absent or
    empty) gets :data:`OUTPUT_MARKER` if anything was written, and is removed if not. An
    existing folder is never marked: it may hold the user's own files.

    Parameters
    ----------
    folder : path-like
        The output folder (created by the command itself).
    inputs, nest_in
        See :func:`check_no_overlap`.

    Yields
    ------
    Path
        ``folder``.
    """
    folder = Path(folder)
    check_no_overlap(folder, inputs, nest_in=nest_in)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"output {folder} exists and is not a folder")
    probe_writable(folder / OUTPUT_MARKER)
    existed = folder.is_dir()
    new = not existed or not any(folder.iterdir())
    _register_output(folder, None)
    try:
        yield folder
    finally:
        # Best effort: a full disk here must not hide the command's own error.
        with contextlib.suppress(OSError):
            if new and folder.is_dir():
                if any(folder.iterdir()):
                    if not _has_marker(folder):
                        write_output_marker(folder)
                elif not existed:
                    folder.rmdir()  # nothing was written: leave nothing behind


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def require_free_space(folder: str | os.PathLike, n_bytes: int, what: str = "the output",
                       margin: float = 0.1) -> None:
    """Refuse up front to start writing ``n_bytes`` where the disk has less room.

    Some writers cannot fail cleanly when the disk fills mid-write (HDF5 can crash the
    process), so a command that knows its output size checks first.

    Parameters
    ----------
    folder : path-like
        The output that will be written (need not exist yet; the space is that of its
        nearest existing folder).
    n_bytes : int
        Estimated size of the output.
    what : str
        How to name the output in the message.
    margin : float
        Extra fraction required on top of ``n_bytes``.

    Raises
    ------
    OSError
        ``errno.ENOSPC``, naming the folder, the estimate and the free space.
    """
    where = _existing_ancestor(Path(folder))
    free = shutil.disk_usage(where).free
    needed = int(n_bytes * (1.0 + margin))
    if free < needed:
        raise OSError(errno.ENOSPC,
                      f"not enough free disk space: {what} needs about {_size(needed)}, "
                      f"{_size(free)} free; free some space or choose another location",
                      str(folder))


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def require_hdf5(path: str | os.PathLike, what: str = "file") -> Path:
    """Check that ``path`` is an existing HDF5 file, with a message naming it otherwise.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file is not HDF5 (h5py would raise an ``OSError`` that does not name it).
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not h5py.is_hdf5(path):
        raise ValueError(f"{what} {path} is not an HDF5 file")
    return path


def probe_writable(path: str | os.PathLike) -> None:
    """Fail now, not after the work, if ``path`` (a file or folder to create) cannot be written.

    A temporary file is created and removed in the folder that will hold ``path`` (or in its
    nearest existing ancestor); nothing else is touched. Unlike ``os.access``, this also
    catches read-only file systems and works for root.

    Raises
    ------
    OSError
        ``NotADirectoryError`` naming a file standing where a folder is needed, or the error
        of the probe (read-only file system, permission denied, ...) naming ``path``.
    """
    path = Path(path)
    _register_output(path, None)  # so that describe_os_error calls a failure a write error
    ancestor = _existing_ancestor(path.parent)
    if not ancestor.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(ancestor))
    try:
        with tempfile.TemporaryFile(prefix=".labdct-live-probe.", dir=ancestor):
            pass
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None


def make_parent_folder(path: str | os.PathLike) -> Path:
    """Create the folder that will hold ``path`` (and its parents).

    Raises
    ------
    NotADirectoryError
        Naming the existing file that stands where a folder is needed (``mkdir`` alone would
        report a confusing ``FileExistsError`` on some component).
    """
    parent = Path(path).parent
    ancestor = _existing_ancestor(parent)
    if not ancestor.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(ancestor))
    parent.mkdir(parents=True, exist_ok=True)
    return parent


class AtomicOutputDir:
    """Context manager giving a scratch folder that becomes ``final`` only on success.

    Inside the ``with`` block, write into the yielded path (a hidden sibling of ``final``).
    On normal exit the marker file :data:`OUTPUT_MARKER` is added and the folder renamed to
    ``final``; on an exception it is deleted, so ``final`` never holds partial output.
    ``final`` is checked on construction (:func:`check_output_dir`), before any work.

    Parameters
    ----------
    final : path-like
        The output folder. It must not exist, or be empty, unless ``overwrite`` is True.
    overwrite : bool
        Replace an existing non-empty ``final`` (only after the new output is complete),
        provided labdct-live wrote it (it holds the marker).
    inputs : iterable of path-like or None
        The command's inputs: ``final`` must not be, contain or lie inside any of them.
    nest_in : iterable of path-like or None
        Inputs ``final`` may lie inside (see :func:`check_no_overlap`).
    """

    def __init__(self, final: str | os.PathLike, overwrite: bool = False, *,
                 inputs: Iterable[str | os.PathLike | None] = (),
                 nest_in: Iterable[str | os.PathLike | None] = ()):
        self.overwrite = overwrite
        self.final = check_output_dir(final, inputs, overwrite=overwrite, nest_in=nest_in)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        _register_output(self.final, None)
        make_parent_folder(self.final)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", suffix=".partial",
                                         dir=self.final.parent))
        _register_output(self.final, self.tmp)
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp makes it private; outputs are not
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            write_output_marker(self.tmp)
            # Checked again: the folder may have been filled by someone else meanwhile.
            check_output_dir(self.final, overwrite=self.overwrite)
            if self.final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", suffix=".old",
                                            dir=self.final.parent))
                os.replace(self.final, old)  # onto the empty placeholder: always allowed
                try:
                    os.replace(self.tmp, self.final)
                except BaseException:
                    os.replace(old, self.final)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self.tmp, self.final)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
