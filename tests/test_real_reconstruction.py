"""benchmarks/real_reconstruction.py without the real frames: its geometry and its skip."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "real_reconstruction", ROOT / "benchmarks" / "real_reconstruction.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_geometry_is_the_instrument_file_with_the_parameter_files_band(bench):
    geometry, omegas = bench.iron_geometry()
    assert geometry.detector_shape == (1024, 1024)
    assert geometry.lss == 100.0 and geometry.lsd == pytest.approx(99.969)
    assert geometry.pixel_size == pytest.approx(0.068334)
    assert geometry.tilt == (0.0, -2.062, 0.0)
    assert geometry.center == (512.08, 512.67)
    assert geometry.kvp - 2.0 == bench.E_MAX_KEV == 110.0
    np.testing.assert_allclose(omegas, 180.0 - 3.0 * np.arange(121))
    # the envelope holds the parameter files' bound on grain centres (|x|, |y|, |z| <= 0.5)
    assert bench.SAMPLE_DIAMETER_MM >= 1.0 and bench.SAMPLE_HEIGHT_MM >= 1.0


def test_skips_without_the_real_frames(bench, monkeypatch, capsys):
    monkeypatch.delenv("LABDCT_REAL_DATA", raising=False)
    assert bench.main([]) == 0
    assert "skipped: set LABDCT_REAL_DATA" in capsys.readouterr().out


def test_refuses_a_mask_cache_inside_the_repository(bench, monkeypatch, tmp_path):
    monkeypatch.setenv("LABDCT_REAL_DATA", str(tmp_path))
    with pytest.raises(SystemExit, match="lies in the repository"):
        bench.main(["--cache", str(ROOT / "masks")])
