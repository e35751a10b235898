"""Training data for the denoising U-Net: backgrounds from real frames, synthesis of noisy
inputs and targets, acquisitions, the projection cache, crops and torch datasets, one
instrument's training frames and those of random instruments.
"""

from labdct_live._lazy import attach

_SUBMODULES = {
    "acquisitions": ["Acquisition", "paper_acquisitions", "varied_acquisitions"],
    "backgrounds": ["spot_mask", "remove_spots", "extract_backgrounds"],
    "cache": [
        "DatasetError", "CachedProjection", "ProjectionCache", "build_projection_cache",
        "write_projection_cache",
    ],
    "crops": ["CropSettings", "generate_crops"],
    "synthesis": [
        "SynthesisError", "TARGET_PARAMS", "NORMALIZE_PERCENTILES", "draw_r_bg",
        "compose_clean_input", "add_noise", "synthesize_input", "spot_signal", "log_target",
        "label_target", "make_target", "spot_statistics", "predicted_snr", "scale_for_median_snr",
        "normalization_stats", "normalization_stride", "normalize_frame", "to_uint8",
        "SynthesisConfig", "Pair", "make_pair", "random_acquisition",
    ],
    "torchdata": ["split_projections", "SyntheticPairStream", "write_pair_dataset", "PairDataset"],
    "noise_model": [
        "NoiseModel", "NoiseModelError", "estimate_noise", "stack_median",
    ],
    "instrument_data": [
        "INPUT_MODES", "InstrumentSynthesis", "Scene", "count_backgrounds", "instrument_crops",
        "scene_crops",
    ],
    "broad": [
        "BroadRanges", "broad_acquisitions", "broad_crops", "random_geometry",
        "random_noise_model", "random_scene",
    ],
}

__getattr__, __dir__, __all__ = attach(__name__, _SUBMODULES)
