"""The instrument: a rotation stage and a LabDCT detector.

By default the simulated instrument (LABDCT_INSTRUMENT=sim): frames from the forward simulator
of a preset sample (LABDCT_SAMPLE, default D35; LABDCT_DETECTOR=ROWSxCOLS bins the detector).

To use real hardware set LABDCT_INSTRUMENT=epics and fill in the block below. A real detector
needs: an ``exposure`` signal (s); images that reach the live processor as StreamResource/
StreamDatum (HDF5), Resource/Datum (AD_HDF5) or embedded in events; a ``describe()`` with
``dtype_numpy``. The rotation stage is any ophyd positioner in degrees.
"""

import os

if os.environ.get("LABDCT_INSTRUMENT", "sim") == "sim":
    _shape = os.environ.get("LABDCT_DETECTOR")
    detector, rotation = session.simulated_instrument(  # noqa: F821 (from 00-session.py)
        os.environ.get("LABDCT_SAMPLE", "D35"),
        detector_shape=tuple(int(v) for v in _shape.split("x")) if _shape else None,
    )
else:
    # ---- real devices: replace the prefixes with your beamline's PVs ----------------------
    from ophyd import EpicsMotor
    from ophyd.areadetector.plugins import HDF5Plugin  # noqa: F401 (for your detector class)

    rotation = EpicsMotor("XF:00ID-ES{Rot:1}Mtr", name="rotation")
    detector = None  # e.g. YourAreaDetector("XF:00ID-ES{Det:1}", name="labdct"): see docs
    raise RuntimeError("LABDCT_INSTRUMENT=epics: configure your detector in "
                       "profiles/profile_labdct/startup/10-devices.py")
