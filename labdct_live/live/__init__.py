"""Running live: the session that wires a RunEngine to the callbacks, replay of past scans,
0MQ transport (addresses, CURVE, proxy, dispatcher), spool import, and following a run live
(the viewer).
"""

from labdct_live._lazy import attach

_SUBMODULES = {
    "addresses": [
        "CURVE_DIR_ENV", "DEFAULT_IN", "DEFAULT_OUT", "CurveClient", "CurveServer",
        "InsecureBindError", "endpoint", "is_loopback",
    ],
    "remote": [
        "Proxy", "Publisher", "RemoteDispatcher", "make_dispatcher", "make_proxy", "make_publisher",
    ],
    "replay": [
        "replay_run", "agreement", "ReplayResult", "image_key_of", "resolve_run_uid", "RunNotFound",
    ],
    "session": ["LiveSession"],
    "spool_import": ["import_spool", "import_raw_run"],
    "viewer": ["RunSnapshot", "read_snapshot", "save_png", "snapshot_figure", "watch"],
}

__getattr__, __dir__, __all__ = attach(__name__, _SUBMODULES)
