"""Fixtures shared by several test modules, and guards that keep a CI log readable."""

from __future__ import annotations

import faulthandler
import os
import shutil
import sys
import tempfile
import time

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


#: The whole suite takes about 5 minutes on 2 cores. Past this limit (seconds) something hangs
#: where pytest-timeout cannot reach (a thread stuck in C, a cleanup waiting on it): dump
#: every thread's stack and exit, so CI fails with the place instead of running out its time.
SESSION_LIMIT = float(os.environ.get("LABDCT_TEST_SESSION_LIMIT", "2700"))

_started = time.monotonic()


def pytest_sessionstart(session):
    if SESSION_LIMIT > 0:
        faulthandler.dump_traceback_later(SESSION_LIMIT, exit=True, file=sys.__stderr__)


def pytest_sessionfinish(session, exitstatus):
    faulthandler.cancel_dump_traceback_later()


def pytest_terminal_summary(terminalreporter):
    """The machine facts that explain a slow or failing run, at the end where CI logs show."""
    import numba
    import torch

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel numba function ran
        layer = "not started"

    free = {name: shutil.disk_usage(path).free / 2**30
            for name, path in (("tmp", tempfile.gettempdir()), ("checkout", os.getcwd()))}
    terminalreporter.write_line(
        f"machine: {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), torch "
        f"{torch.__version__} with {torch.get_num_threads()} threads, numba threading layer "
        f"{layer}; free disk "
        + ", ".join(f"{k} {v:.1f} GiB" for k, v in free.items())
        + f"; session {time.monotonic() - _started:.0f} s")
