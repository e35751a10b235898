"""GrainRecon grain maps: the GrainMapper3D layout with Bunge Euler angles in degrees."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import h5py

from labdct_live.grains.formats.gm3d import _DATA, read_gm3d

if TYPE_CHECKING:
    from labdct_live.grains.grainmap import GrainMap

__all__ = [
    "read_grainrecon",
]


def read_grainrecon(path: str | os.PathLike) -> GrainMap:
    """Read GrainRecon's output: the GrainMapper3D layout with Euler angles in degrees.

    The Euler angles are used when present (Rodrigues otherwise).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grain-map file {path} does not exist")
    with h5py.File(path, "r") as f:
        has_euler = f"{_DATA}/EulerZXZ" in f
    gm = read_gm3d(path, euler_unit="deg", prefer="euler" if has_euler else "auto")
    gm.metadata["format"] = "grainrecon"
    return gm


# DREAM.3D CrystalStructures enumeration -> a representative space group.
_DREAM3D_LAUE_TO_SPACE_GROUP = {0: 194, 1: 225, 2: 191, 3: 200, 4: 221, 5: 2, 6: 12,
                                7: 47, 8: 83, 9: 123, 10: 147, 11: 166}
