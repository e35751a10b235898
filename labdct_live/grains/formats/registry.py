"""One entry point for every grain-map format: :func:`read_grainmap` picks the reader by content."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import h5py

from labdct_live.grains.formats.dream3d import read_dream3d
from labdct_live.grains.formats.gm3d import read_gm3d
from labdct_live.grains.formats.grainrecon import read_grainrecon
from labdct_live.grains.phase import GrainMapError

if TYPE_CHECKING:
    from labdct_live.grains.grainmap import GrainMap

__all__ = [
    "read_grainmap",
]


def read_grainmap(path: str | os.PathLike, fmt: str = "auto") -> GrainMap:
    """Read a grain map in any supported format.

    Parameters
    ----------
    path : path-like
        GrainMapper3D / GrainRecon ``.h5`` or DREAM.3D ``.dream3d`` file.
    fmt : {"auto", "gm3d", "grainrecon", "dream3d"}
        "auto" picks DREAM.3D when the file has ``/DataContainers``, GrainMapper3D otherwise
        (GrainRecon files cannot be told apart: pass "grainrecon").
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grain-map file {path} does not exist")
    if fmt == "auto":
        with h5py.File(path, "r") as f:
            fmt = "dream3d" if "DataContainers" in f else "gm3d"
    readers = {"gm3d": read_gm3d, "grainrecon": read_grainrecon, "dream3d": read_dream3d}
    if fmt not in readers:
        raise GrainMapError(f"fmt={fmt!r}: use one of auto, {', '.join(readers)}")
    return readers[fmt](path)
