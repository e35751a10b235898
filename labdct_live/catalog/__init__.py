"""The tiled catalog: an embedded server, the connection, what "unavailable" means, and the
layout of a processed run.
"""

from labdct_live._lazy import attach

_SUBMODULES = {
    "client": ["connect"],
    "errors": [
        "CATALOG_ERRORS", "CatalogUnavailable", "describe_catalog_error", "is_auth_error",
        "is_transient_error",
    ],
    "processed": [
        "FRAME_SCHEMA", "SPOT_SCHEMA", "ProcessedRunWriter", "frame_row", "frames_in_catalog",
    ],
    "server": ["CatalogServer", "Terminated", "stop_on_signals", "tiled_config_yaml"],
}

__getattr__, __dir__, __all__ = attach(__name__, _SUBMODULES)
