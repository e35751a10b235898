"""``labdct-live demo`` end to end: scan, live processing, reconstruction, comparison.

The demo runs in-process on a small preset registered for the test (8 Al grains, the sample of
tests/test_end_of_scan_reconstruction.py), 37 projections on a 512² detector with the
paper's field of view, the standard routine and a long exposure. The tests check what the demo
prints and writes, not how many grains the routine's masks let it find. The demo's
full-size default (D35, 181 projections at 2032², the U-Net) is measured in
docs/performance.md.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from labdct_live.catalog.server import CatalogServer
from labdct_live.cli import main
from labdct_live.grains.formats.gm3d import read_gm3d
from labdct_live.simulation.geometry import Geometry
from labdct_live.simulation.microstructure import SampleSpec
from labdct_live.simulation.presets import PRESETS

N_GRAINS = 8
SAMPLE = "test-8"
SMALL = ["--sample", SAMPLE, "--seed", "3", "--method", "routine", "--exposure", "20"]
COUNTS = re.compile(r"reference grains (\d+), reconstructed (\d+): one-to-one (\d+), "
                    r"one-to-multi (\d+) \(split into (\d+)\), missed (\d+), false (\d+)")
DELTA_GB = re.compile(r"δ_GB over (\d+) paired grains: mean ([\d.]+) µm, median ([\d.]+) µm")


@pytest.fixture(autouse=True)
def small_preset(monkeypatch):
    monkeypatch.setitem(PRESETS, SAMPLE, (SampleSpec("Al", 0.1, 0.1, n_grains=N_GRAINS,
                                                     name=SAMPLE), Geometry()))


def run_demo(out, *argv) -> tuple[int, str]:
    """``(exit status, stdout)`` of ``labdct-live demo`` (the hook's lines come from its
    worker thread, hence the redirect rather than capsys)."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        code = main(["demo", *SMALL, *argv, "--out", str(out)])
    return code, text.getvalue()


def processed_frames(out) -> tuple[str, list]:
    """``(status, frame indices)`` of the demo's processed run in its catalog."""
    with CatalogServer(out / "catalog", readable_storage=[out / "raw"]) as server:
        client = server.client()
        (uid,) = [k for k in client if k != "processed"]
        node = client["processed"][uid]
        return node.metadata["status"], sorted(node["frames"].read().frame)


@pytest.mark.slow  # about 2 min on 2 loaded cores (the scan, processing, reconstruction)
def test_demo_reconstructs_and_prints_the_comparison(tmp_path):
    out = tmp_path / "demo"
    code, text = run_demo(out, "--projections", "37", "--detector", "512", "512",
                          "--reconstruct-bin", "1")
    assert code == 0, text
    assert "reconstructing the grain map of" in text
    assert "from 37 binary frames of 512x512 ..." in text
    found = int(re.search(r"reconstructed \S+: (\d+) grains", text).group(1))
    # the routine's masks of a noisy scan: how many grains is the reconstruction's business
    # (tests/test_end_of_scan_reconstruction.py), the demo must print what it found
    assert 1 <= found <= 2 * N_GRAINS, text

    counts = COUNTS.search(text)
    assert counts, text
    reference, indexed, one_to_one, one_to_multi, _, missed, false = map(int, counts.groups())
    assert reference == N_GRAINS and indexed == found
    assert one_to_one >= 1 and one_to_one + one_to_multi + missed == N_GRAINS
    assert false <= indexed
    delta = DELTA_GB.search(text)
    assert delta, text
    assert 1 <= int(delta.group(1)) <= N_GRAINS and float(delta.group(2)) > 0

    # the files it names are there: the reference it wrote, the grain map, the report
    reference_file = out / "reference" / "grainmap.h5"
    assert read_gm3d(reference_file).n_grains == N_GRAINS
    grainmap = re.search(r"^  grain map +(\S+)", text, re.M).group(1)
    assert read_gm3d(grainmap).n_grains == found
    report = re.search(r"^  report +(\S+)", text, re.M).group(1)
    assert report.endswith("report.md") and Path(report).is_file()
    assert re.search(r"reconstruction \d+ s, comparison \d+ s", text)


def test_a_failed_reconstruction_is_reported_and_keeps_the_frames(tmp_path, monkeypatch):
    import labdct_live.reconstruction.pipeline as pipeline

    def fail(*args, **kwargs):
        raise MemoryError("cannot allocate the distance maps")

    monkeypatch.setattr(pipeline, "reconstruct", fail)
    out = tmp_path / "demo"
    code, text = run_demo(out, "--projections", "13", "--detector", "128", "128")
    assert code == 1, text
    assert "from 13 binary frames of 64x64 (binned 2x2)" in text  # the default binning
    assert "! reconstruction failed: MemoryError: cannot allocate the distance maps" in text
    assert "labdct-live reconstruct --from-catalog" in text
    assert COUNTS.search(text) is None
    assert processed_frames(out) == ("complete", list(range(13)))


def test_a_binning_that_does_not_divide_the_detector_is_refused_up_front(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", *SMALL, "--projections", "13", "--detector", "128", "128",
                 "--reconstruct-bin", "3", "--out", str(out)])
    assert code == 2
    assert "--reconstruct-bin 3 must be a positive divisor of the detector's 128x128" in (
        capsys.readouterr().err)
    assert not out.exists()


def test_no_reconstruct_skips_reconstruction_and_comparison(tmp_path):
    out = tmp_path / "demo"
    code, text = run_demo(out, "--projections", "13", "--detector", "128", "128",
                          "--no-reconstruct")
    assert code == 0, text
    assert "reconstructing" not in text and "Grain map" not in text
    assert not (out / "reference").exists()
    assert processed_frames(out) == ("complete", list(range(13)))
