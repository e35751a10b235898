"""Spot segmentation on arrays: normalisation, the standard routine, one threshold, spot
tables in one schema, SNR, metrics against ground truth, tuning and reports.
"""

from labdct_live._lazy import attach

_SUBMODULES = {
    "metrics": [
        "DEFAULT_SNR_BINS", "SpotMatch", "match_spots", "boundary_error", "detection_scores",
        "scores_by_snr", "pixel_counts", "pixel_scores", "Evaluation", "evaluate_frames",
    ],
    "normalization": [
        "NORMALIZE_PERCENTILES", "NORMALIZE_SAMPLES", "normalization_stride",
        "normalization_stats", "normalize_frame",
    ],
    "report": ["markdown_table", "summary_table", "write_report"],
    "rolling_median": [
        "RoutineParameterError", "StackTooShortError", "RollingMedianSubtractor",
        "subtract_rolling_median",
    ],
    "routine": [
        "RoutineParams", "FrameResult", "StandardRoutine", "log_response", "threshold_response",
        "segment_corrected", "iter_standard_routine", "standard_routine",
    ],
    "snr": [
        "DEFAULT_MARGIN", "VISIBLE_SDS", "spot_snr", "snr_summary", "exposure_for_snr",
        "SNR_TABLE_COLUMNS",
    ],
    "spot_schema": [
        "SpotColumn", "SPOT_COLUMNS", "SPOT_TABLE_COLUMNS", "SPOT_COLUMN_NAMES", "conform_spots",
        "spot_columns_markdown",
    ],
    "spots": ["label_spots", "as_labels", "spot_table"],
    "threshold": ["threshold_segment", "remove_small_components", "FOUR_CONNECTIVITY"],
    "tune": ["DEFAULT_GRID", "TuneResult", "tune_routine", "score_params"],
    "friedel": [
        "FrameSpots", "FriedelMatch", "DEFAULT_CONTROL_SHIFT", "DEFAULT_TOLERANCE",
        "STATIC_FRACTION", "frame_spots", "friedel_match", "friedel_mirror", "friedel_pairs",
        "friedel_shift_bound", "mirror_about_row",
    ],
    "consistency": [
        "ScanConsistency", "ScanSummary", "fit_mirror_row", "recurrence", "score_scan",
        "static_map",
    ],
    "scan_filters": [
        "StaticBackground", "drop_faint", "grow_spots", "load_background_image", "reject_zingers",
        "subtract_static",
    ],
}

__getattr__, __dir__, __all__ = attach(__name__, _SUBMODULES)
