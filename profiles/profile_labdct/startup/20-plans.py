"""Plans: a LabDCT rotation scan, and one that adapts the exposure to a target SNR.

    RE(labdct_scan(detector, rotation, step=2, exposure=60))
    RE(adaptive_exposure_scan(detector, rotation, monitor.latest_snr, target_snr=4,
                              step=2, exposure=30, max_exposure=600))
    session.wait()   # results complete, exports written
"""

from labdct_live.acquisition.plans import adaptive_exposure_scan, labdct_scan  # noqa: F401

print("plans: labdct_scan, adaptive_exposure_scan; devices: detector, rotation")
