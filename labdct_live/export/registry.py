"""One registry of export formats: :data:`EXPORTERS` maps each ``--format`` name to its writer."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labdct_live.export.gm3d import write_gm3d_ready
from labdct_live.export.grainrecon import write_grainrecon
from labdct_live.export.metadata import ExportError
from labdct_live.export.nexus import write_nexus

if TYPE_CHECKING:
    from labdct_live.export.metadata import ExportMetadata

__all__ = [
    "FORMATS",
    "export_scan",
]


#: Writer of each export format, by the name ``--format`` takes.
FORMATS: dict[str, Callable[..., Path]] = {
    "grainrecon": write_grainrecon,
    "gm3d": write_gm3d_ready,
    "nexus": write_nexus,
}


def export_scan(binary_frames: Any, metadata: ExportMetadata | Mapping, fmt: str,
                out: str | os.PathLike, **options: Any) -> Path:
    """Export a segmented scan in one format: the entry point of the CLI and the live hook.

    Parameters
    ----------
    binary_frames : ndarray, sequence or iterable
        Masks (uint8 {0, 1} or bool) in projection order, or ``(index, mask)`` pairs in any
        order (e.g. results read back from a catalog).
    metadata : ExportMetadata or dict
        See :meth:`ExportMetadata.from_dict`.
    fmt : {"grainrecon", "gm3d", "nexus"}
        The format.
    out : path-like
        Output folder, created only when complete.
    **options
        Passed to the writer (``overwrite``, ``progress``, ``raw_frames`` for nexus, ...).

    Returns
    -------
    Path
        The output folder.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {sorted(FORMATS)}")
    return FORMATS[fmt](binary_frames, metadata, out, **options)
