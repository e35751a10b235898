"""The IPython profile's startup files set up a working session (run as IPython would)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

STARTUP = Path(__file__).resolve().parents[1] / "profiles" / "profile_labdct" / "startup"


def test_profile_startup_runs_a_scan_end_to_end(tmp_path):
    script = textwrap.dedent(f"""
        import glob
        ns = {{}}
        for path in sorted(glob.glob({str(STARTUP)!r} + "/*.py")):
            exec(compile(open(path).read(), path, "exec"), ns)
        RE, detector, rotation = ns["RE"], ns["detector"], ns["rotation"]
        (uid,) = RE(ns["labdct_scan"](detector, rotation, start=0, stop=60, step=5,
                                      exposure=2.0))
        ns["session"].wait(120)
        frames = ns["catalog"]["processed"][uid]["frames"].read()
        print("FRAMES", sorted(frames.frame.tolist()), ns["session"].method)
        ns["session"].close()
    """)
    env = {**os.environ, "LABDCT_WORKDIR": str(tmp_path / "work"), "LABDCT_SAMPLE": "D18",
           "LABDCT_DETECTOR": "256x256", "LABDCT_METHOD": "routine", "LABDCT_EXPORT": "grainrecon"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "FRAMES " + str(list(range(13))) + " routine" in out.stdout
    exports = list((tmp_path / "work" / "export").glob("*/grainrecon/proj0001.tif"))
    assert len(exports) == 1
