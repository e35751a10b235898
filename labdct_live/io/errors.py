"""What a failed command tells its user: the command's outputs, and an operating-system error
turned into one sentence naming the path and the reason.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CommandRun",
    "command_context",
    "describe_os_error",
]


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
