"""Plans: a LabDCT rotation scan, one that adapts the exposure to a target SNR, and one that
the live grain map drives (LABDCT_LIVE_MAP=K: stops when the map is enough).

    RE(labdct_scan(detector, rotation, step=2, exposure=60))
    RE(adaptive_exposure_scan(detector, rotation, monitor.latest_snr, target_snr=4,
                              step=2, exposure=30, max_exposure=600))
    RE(quality_scan(detector, rotation, live_map.latest, step=2, exposure=60))
    session.wait()   # results complete, exports written
"""

from labdct_live.acquisition.plans import (  # noqa: F401
    adaptive_exposure_scan,
    labdct_scan,
    quality_scan,
)

print("plans: labdct_scan, adaptive_exposure_scan, quality_scan; devices: detector, rotation")
