"""pytest configuration of the checkout, for the doctests of the package.

``make test`` runs ``pytest --doctest-modules labdct_live tests``: every module of the package
is imported and the ``>>>`` examples of its docstrings run. The test suite's own fixtures are
in ``tests/conftest.py``.
"""

from __future__ import annotations

import pytest

# Importing it runs the command line (pytest's doctest collection skips it too).
collect_ignore = ["labdct_live/__main__.py"]

#: Doctests whose examples use a small simulated instrument, as made in the example of
#: ``labdct_live.acquisition.detector.LabDCTDetector``: ``RE``, ``det`` and ``rotation``.
INSTRUMENT_DOCTESTS = ("labdct_live.acquisition.plans.",)


@pytest.fixture(autouse=True)
def _doctest_instrument(request, doctest_namespace):
    item = request.node
    if not (isinstance(item, pytest.DoctestItem) and item.name.startswith(INSTRUMENT_DOCTESTS)):
        yield
        return
    from bluesky import RunEngine

    from labdct_live.acquisition.detector import (
        LabDCTDetector,
        make_rotation_stage,
        scaled_geometry,
    )
    from labdct_live.simulation.forward import Simulator
    from labdct_live.simulation.microstructure import make_sample
    from labdct_live.simulation.presets import preset

    spec, geometry = preset("D18")
    sim = Simulator(make_sample(spec, seed=1), scaled_geometry(geometry, (128, 128)))
    rotation = make_rotation_stage()
    names = {"RE": RunEngine({}), "rotation": rotation,
             "det": LabDCTDetector(simulator=sim, rotation=rotation, mode="embedded", seed=1)}
    doctest_namespace.update(names)
    yield
    for name in names:
        doctest_namespace.pop(name, None)
