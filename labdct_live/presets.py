"""Named acquisitions: the seed paper's virtual samples and its Fe experiment.

=========  ==========  ===================  ======  =================  ===================
preset     material    diameter x height    grains  Lss / Lsd (mm)     spots/projection
=========  ==========  ===================  ======  =================  ===================
D18        Al          100 x 150 µm         230     11 / 11, 140 kV    391 ± 18 (paper)
D35        Al          200 x 300 µm         337     11 / 11, 140 kV    717 ± 22 (paper)
D64        Al          400 x 600 µm         485     11 / 11, 140 kV    1028 ± 26 (paper)
Fe-exp     Fe          300 x 400 µm         596     13 / 13, 160 kV    (experiment)
=========  ==========  ===================  ======  =================  ===================

The Fe experiment's sample size is not given in the paper; 300 x 400 µm holds its 596 grains
of 39.6 µm mean size. Its 2.5 mm beam stop sits between sample and detector; we model its
shadow as 2.5 x 2.5 mm on the detector.
"""

from __future__ import annotations

from .geometry import Geometry, PAPER_PIXEL_SIZE_MM
from .microstructure import SampleSpec

__all__ = ["PRESETS", "preset"]


def _fe_beamstop() -> tuple[int, int, int, int]:
    half = 1.25 / PAPER_PIXEL_SIZE_MM
    c = 1015.5
    return (round(c - half), round(c + half), round(c - half), round(c + half))


PRESETS: dict[str, tuple[SampleSpec, Geometry]] = {
    "D18": (SampleSpec("Al", 0.100, 0.150, n_grains=230, name="D18"), Geometry()),
    "D35": (SampleSpec("Al", 0.200, 0.300, n_grains=337, name="D35"), Geometry()),
    "D64": (SampleSpec("Al", 0.400, 0.600, n_grains=485, name="D64"), Geometry()),
    "Fe-exp": (
        SampleSpec("Fe", 0.300, 0.400, n_grains=596, name="Fe-exp"),
        Geometry(lss=13.0, lsd=13.0, kvp=160.0, beamstop=_fe_beamstop()),
    ),
}


def preset(name: str) -> tuple[SampleSpec, Geometry]:
    """The ``(SampleSpec, Geometry)`` of a named preset (``D18``, ``D35``, ``D64``, ``Fe-exp``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown sample preset {name!r}; choose one of {sorted(PRESETS)}") from None
