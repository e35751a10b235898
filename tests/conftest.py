"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest

from labdct_live.devices import scaled_geometry
from labdct_live.geometry import Geometry
from labdct_live.microstructure import SampleSpec, make_sample
from labdct_live.simulate import Simulator

#: Detector size of the fast instrument tests.
SMALL_DETECTOR = (256, 256)


@pytest.fixture(scope="module")
def simulator():
    """A tiny 8-grain Al sample seen by a 256² detector (the paper's field of view, binned)."""
    geometry = scaled_geometry(Geometry(), SMALL_DETECTOR)
    spec = SampleSpec("Al", 0.06, 0.06, n_grains=8, name="tiny")
    return Simulator(make_sample(spec, seed=1), geometry)
