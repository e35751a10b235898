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

The presets use Voronoi cells with a hard-core seed spacing of half the mean grain size, the
paper's recipe, whose grain sizes are nearly uniform (SD/mean about 0.1). Table 1 reports a
wider spread (18.3 ± 7.7, 35.8 ± 8.2, 63.6 ± 14.1 µm): ``preset(name, size_spread="paper")``
gives Laguerre samples with that spread (:data:`PAPER_SIZE_SPREAD`).
"""

from __future__ import annotations

from dataclasses import replace

from labdct_live.simulation.geometry import PAPER_PIXEL_SIZE_MM, Geometry
from labdct_live.simulation.microstructure import SampleSpec

__all__ = ["PAPER_SIZE_SPREAD", "PRESETS", "preset"]


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


#: SD/mean of the grain sizes of the paper's samples (Table 1).
PAPER_SIZE_SPREAD = {"D18": 7.7 / 18.3, "D35": 8.2 / 35.8, "D64": 14.1 / 63.6}


def preset(name: str, size_spread: float | str | None = None) -> tuple[SampleSpec, Geometry]:
    """The ``(SampleSpec, Geometry)`` of a named preset (``D18``, ``D35``, ``D64``, ``Fe-exp``).

    Parameters
    ----------
    name : str
    size_spread : float or "paper", optional
        Replaces the sample's ``size_spread`` (see
        :class:`~labdct_live.simulation.microstructure.SampleSpec`);
        ``"paper"`` takes Table 1's spread of the sample (:data:`PAPER_SIZE_SPREAD`).
    """
    try:
        spec, geometry = PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown sample preset {name!r}; choose one of {sorted(PRESETS)}") from None
    if size_spread == "paper":
        if name not in PAPER_SIZE_SPREAD:
            raise ValueError(f"the paper gives no grain-size spread for {name!r}; give a number")
        size_spread = PAPER_SIZE_SPREAD[name]
    if size_spread is not None:
        spec = replace(spec, size_spread=float(size_spread))
    return spec, geometry
