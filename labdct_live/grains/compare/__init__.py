"""Comparison of a reconstructed grain map with a reference (the paper's Table 2 and δ_GB).
"""

from labdct_live._lazy import attach

_SUBMODULES = {
    "boundaries": ["delta_gb", "deviation_map"],
    "comparison": ["Comparison", "compare_grainmaps", "delta_gb_ratio"],
    "pairing": [
        "CLASS_FALSE_NEGATIVE", "CLASS_FALSE_POSITIVE", "CLASS_ONE_TO_MULTI", "CLASS_ONE_TO_ONE",
        "pair_grains",
    ],
    "registration": [
        "EmptyGrainMapError", "NonCubicPhaseError", "Registration", "VoxelSizeMismatchError",
        "boundary_mask", "register", "resample_onto",
    ],
    "report": ["table2", "write_report"],
}

__getattr__, __dir__, __all__ = attach(__name__, _SUBMODULES)
