"""The simulated instrument (an ophyd detector that forward-simulates its frames) and the
Bluesky plans of a LabDCT scan.
"""

from labdct_live._lazy import attach

_SUBMODULES = {
    "detector": [
        "HDF5_COMPLETE", "HDF5_DATASET", "HDF5_MIMETYPE", "IMAGE_DTYPE", "DetectorError",
        "LabDCTDetector", "make_rotation_stage", "scaled_geometry",
    ],
    "plans": ["PlanError", "adaptive_exposure_scan", "labdct_scan", "next_exposure", "scan_omegas"],
}

__getattr__, __dir__, __all__ = attach(__name__, _SUBMODULES)
