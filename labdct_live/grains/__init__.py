"""Grain maps: the :class:`GrainMap` model, phases and orientation conventions, the file
formats behind one reader (:func:`read_grainmap`), and the comparison of a reconstruction
with a reference (registration, pairing, δ_GB, report).
"""

from labdct_live._lazy import attach

_SUBMODULES = {
    "grainmap": ["GrainMap"],
    "orientations": ["bunge_to_matrix", "matrix_to_bunge"],
    "phase": ["ALUMINIUM", "GrainMapError", "Phase"],
    "formats.gm3d": ["GrainMapFormatError", "read_gm3d", "write_gm3d"],
    "formats.grainrecon": ["read_grainrecon"],
    "formats.dream3d": ["read_dream3d"],
    "formats.registry": ["read_grainmap"],
    "compare.comparison": ["Comparison", "compare_grainmaps"],
}

__getattr__, __dir__, __all__ = attach(__name__, _SUBMODULES)
