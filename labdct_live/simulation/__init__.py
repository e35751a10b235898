"""The forward simulator of LabDCT frames: geometry, crystal, spectrum, microstructure, ray
tracing, the forward model, procedural backgrounds, presets and the scan folder it writes.
"""

from labdct_live._lazy import attach

_SUBMODULES = {
    "background": [
        "BackgroundError", "ProceduralBackground", "ArrayBackground", "procedural_background",
        "background_for_geometry", "beam_center_pixel",
    ],
    "crystal": [
        "Material", "MATERIALS", "MaterialError", "Reflections", "atomic_form_factor",
        "get_material",
    ],
    "forward": ["SimulationOptions", "Simulator", "Projection", "SPOT_COLUMNS"],
    "geometry": [
        "Geometry", "GeometryError", "NO_BEAMSTOP", "PAPER_PIXEL_SIZE_MM", "rotation_matrix_z",
        "tilt_matrix",
    ],
    "microstructure": [
        "SampleSpec", "Sample", "SampleError", "make_sample", "hard_core_seeds", "cell_tree",
        "random_orientations", "single_crystal_sample",
    ],
    "presets": ["PAPER_SIZE_SPREAD", "PRESETS", "preset"],
    "scanfolder": [
        "write_simulated_scan", "SimulatedScan", "grainmap_of", "frame_name", "FORMAT_NAME",
        "FORMAT_VERSION",
    ],
    "spectrum": ["Spectrum", "tube_spectrum", "linear_attenuation", "HC_KEV_ANGSTROM"],
    "instrument": [
        "Instrument", "InstrumentFileError", "load_instrument",
        "omegas_are_uniform",
    ],
}

__getattr__, __dir__, __all__ = attach(__name__, _SUBMODULES)
