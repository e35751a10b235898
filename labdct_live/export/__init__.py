"""Reconstruction-ready export of binary frames: one module per format (GrainRecon,
GrainMapper3D-ready, NeXus) behind one registry (:func:`export_scan`).
"""

from labdct_live._lazy import attach

_SUBMODULES = {
    "gm3d": ["write_gm3d_ready", "gm3d_frame_names", "GM3D_SIDECAR", "GM3D_NAME_PATTERN"],
    "grainrecon": [
        "write_grainrecon", "grainrecon_name", "grainrecon_parameters", "tilt_angles_zyx",
        "GRAINRECON_SIDECAR", "GRAINRECON_OMEGA_LIST",
    ],
    "masks": ["MaskFolder", "open_mask_folder"],
    "metadata": ["ExportError", "ExportMetadata", "normalize_processing", "metadata_from_scan"],
    "nexus": ["write_nexus", "NEXUS_FILE"],
    "registry": ["FORMATS", "export_scan"],
}

__getattr__, __dir__, __all__ = attach(__name__, _SUBMODULES)
