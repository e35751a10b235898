"""Grain-map file formats (GrainMapper3D, GrainRecon, DREAM.3D) behind :func:`read_grainmap`.
"""

from labdct_live._lazy import attach

_SUBMODULES = {
    "dream3d": ["read_dream3d"],
    "gm3d": ["GrainMapFormatError", "read_gm3d", "write_gm3d"],
    "grainrecon": ["read_grainrecon"],
    "registry": ["read_grainmap"],
}

__getattr__, __dir__, __all__ = attach(__name__, _SUBMODULES)
