"""Bluesky callbacks: live processing, exposure monitor, live grain map, end-of-scan hook,
raw-run writer.

Each is an :class:`event_model.DocumentRouter` (through :class:`~labdct_live.callbacks.router.
LiveRouter`, which never raises into the RunEngine): :mod:`~labdct_live.callbacks.live` (the
processor), :mod:`~labdct_live.callbacks.monitor`, :mod:`~labdct_live.callbacks.end_of_scan`
and :mod:`~labdct_live.callbacks.raw_writer`; :mod:`~labdct_live.callbacks.inbox` and
:mod:`~labdct_live.callbacks.readers` are the processor's queue and frame readers;
:mod:`~labdct_live.callbacks.reconstruction` reads a processed run for the grain
reconstruction and stores its grain map; :mod:`~labdct_live.callbacks.live_grainmap` (a frame
listener) updates a grain map while the scan runs and
:mod:`~labdct_live.callbacks.scan_quality` turns each update into a decision.
"""

from labdct_live._lazy import attach

_SUBMODULES = {
    "end_of_scan": ["EndOfScan"],
    "live": ["LiveConfig", "LiveProcessor", "live_router"],
    "live_grainmap": ["LiveGrainMap", "LiveMapSettings"],
    "scan_quality": ["DecisionRule", "ScanQuality", "decide"],
    "monitor": ["ExposureMonitor"],
    "reconstruction": ["scan_from_catalog", "store_grainmap"],
    "raw_writer": ["ResilientTiledWriter"],
    "router": ["LiveRouter"],
}

__getattr__, __dir__, __all__ = attach(__name__, _SUBMODULES)
