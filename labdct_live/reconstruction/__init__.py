"""Open grain reconstruction of LabDCT scans by forward-model indexing.

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

from labdct_live.reconstruction.data import ReconstructionError, SampleEnvelope, ScanData
from labdct_live.reconstruction.forward import ForwardModel, Scores
from labdct_live.reconstruction.hitmaps import HitMapBuilder, HitMaps, build_hit_maps
from labdct_live.reconstruction.orientations import fundamental_zone_grid, misorientation_deg
from labdct_live.reconstruction.pipeline import (
    GRAIN_COLUMNS,
    LowCompletenessWarning,
    ReconstructionOptions,
    ReconstructionResult,
    reconstruct,
)
from labdct_live.reconstruction.search import SearchSettings

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
    "HitMapBuilder",
    "fundamental_zone_grid",
    "misorientation_deg",
    "reconstruct",
]
