"""Fixtures shared by several test modules, and guards that keep a CI log readable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from labdct_live.acquisition.detector import scaled_geometry
from labdct_live.simulation.forward import Simulator
from labdct_live.simulation.geometry import Geometry
from labdct_live.simulation.microstructure import SampleSpec, make_sample

#: Detector size of the fast instrument tests.
SMALL_DETECTOR = (256, 256)


@pytest.fixture(scope="module")
def simulator():
    """A tiny 8-grain Al sample seen by a 256² detector (the paper's field of view, binned)."""
    geometry = scaled_geometry(Geometry(), SMALL_DETECTOR)
    spec = SampleSpec("Al", 0.06, 0.06, n_grains=8, name="tiny")
    return Simulator(make_sample(spec, seed=1), geometry)


#: The whole suite takes about 3-5 minutes on 2 cores. Past this limit (seconds) something
#: hangs where pytest-timeout cannot reach (a thread stuck in C, a cleanup waiting on it): a
#: watchdog process sends SIGABRT, on which faulthandler (enabled by pytest) prints every
#: thread's stack and the run ends, so CI fails with the place instead of running out its time.
#: (faulthandler's own timer cannot serve: pytest's faulthandler_timeout resets it per test.)
SESSION_LIMIT = float(os.environ.get("LABDCT_TEST_SESSION_LIMIT", "2700"))

_started = time.monotonic()
_watchdog: subprocess.Popen | None = None

_WATCHDOG = """
import os, signal, sys, time
pid, limit = int(sys.argv[1]), float(sys.argv[2])
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    time.sleep(1.0)
    if os.getppid() != pid:  # pytest has ended: nothing to stop
        sys.exit(0)
sys.stderr.write(f"tests/conftest.py: the test session passed {limit:.0f} s; aborting it\\n")
os.kill(pid, signal.SIGABRT)
"""


def pytest_sessionstart(session):
    global _watchdog
    if SESSION_LIMIT > 0:
        _watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()),
                                      str(SESSION_LIMIT)])


def pytest_sessionfinish(session, exitstatus):
    if _watchdog is not None:
        _watchdog.kill()
        _watchdog.wait()


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
