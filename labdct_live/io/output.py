"""Output folders: written whole or not at all (:class:`AtomicOutputDir`), never over a folder
the package did not write, with free space and writability checked before the work starts.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from labdct_live import __version__
from labdct_live.io.errors import _RUN, _register_output

__all__ = [
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
]


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
