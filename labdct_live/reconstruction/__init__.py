"""Open grain reconstruction of LabDCT scans by forward-model indexing (issue 12).

From binary frames (segmented spots), their rotation angles, the geometry and the material
to a grain map in the GrainMapper3D layout: seed points in the sample, candidate
orientations from a fundamental-zone grid scored by scattering directions, refinement by
forward-model completeness, voxel assignment, merging. Method, equations and measured
figures: docs/reconstruction.md.

Examples
--------
>>> from labdct_live.reconstruction import read_scan, reconstruct   # doctest: +SKIP
>>> result = reconstruct(read_scan("scan/"))                          # doctest: +SKIP
>>> result.grains[["grain_id", "completeness"]]                       # doctest: +SKIP
"""

from .data import ReconstructionError, SampleEnvelope, ScanData
from .forward import ForwardModel, Scores
from .hitmaps import HitMaps, build_hit_maps
from .orientations import fundamental_zone_grid, misorientation_deg
from .pipeline import (
    GRAIN_COLUMNS,
    LowCompletenessWarning,
    ReconstructionOptions,
    ReconstructionResult,
    reconstruct,
)
from .search import SearchSettings

__all__ = [
    "GRAIN_COLUMNS",
    "ForwardModel",
    "HitMaps",
    "LowCompletenessWarning",
    "ReconstructionError",
    "ReconstructionOptions",
    "ReconstructionResult",
    "SampleEnvelope",
    "ScanData",
    "Scores",
    "SearchSettings",
    "build_hit_maps",
    "fundamental_zone_grid",
    "misorientation_deg",
    "reconstruct",
]
