"""The simulate command and the scan folder it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from labdct_live.cli import main
from labdct_live.grains.formats.gm3d import read_gm3d
from labdct_live.simulation.microstructure import make_sample
from labdct_live.simulation.presets import preset
from labdct_live.simulation.scanfolder import SimulatedScan


@pytest.fixture(scope="module")
def scan_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("scans") / "d18"
    code = main(["simulate", "--sample", "D18", "--projections", "3", "--seed", "4",
                 "--out", str(out)])
    assert code == 0
    return out


def test_simulate_writes_the_documented_layout(scan_dir):
    names = sorted(p.name for p in (scan_dir / "frames").iterdir())
    assert names == ["proj_0000.tif", "proj_0001.tif", "proj_0002.tif"]
    meta = json.loads((scan_dir / "scan.json").read_text())
    assert meta["omegas"] == [-180.0, 0.0, 180.0]
    assert meta["sample"]["name"] == "D18" and meta["seed"] == 4
    scan = SimulatedScan.open(scan_dir)
    assert len(scan) == 3
    frame = tifffile.imread(scan_dir / "frames" / "proj_0001.tif")
    assert frame.dtype == np.uint16 and frame.shape == (2032, 2032)
    labels = scan.labels(1)
    spots = scan.spots(1)
    assert labels.max() == len(spots) == meta["spots_per_projection"][1] > 300
    # the label image and the table agree, pixel by pixel
    counts = np.bincount(labels.ravel(), minlength=len(spots) + 1)[1:]
    assert np.array_equal(counts, spots.n_pixels.to_numpy())
    # -180° and +180° are the same rotation: the same frame
    assert np.array_equal(scan.frame(0), scan.frame(2))
    assert not list(scan_dir.parent.glob(".*partial*"))


def test_grain_map_is_the_sample(scan_dir):
    sample = make_sample(preset("D18")[0], seed=4)
    grainmap = read_gm3d(scan_dir / "grainmap.h5")
    assert np.array_equal(grainmap.grain_ids, sample.grain_ids)
    assert grainmap.spacing == pytest.approx((sample.voxel_size,) * 3)
    # orientations are stored in the cubic fundamental zone: equal up to a symmetry operator
    u_file = grainmap.orientations[1:]
    u_true = sample.orientations[1:]
    delta = np.einsum("gji,gjk->gik", u_true, u_file)  # U_true^T U_file = a cubic operator
    assert np.allclose(np.round(delta), delta, atol=1e-5)


def test_simulate_refuses_to_overwrite_and_reports_bad_input(scan_dir, capsys):
    assert main(["simulate", "--sample", "D18", "--projections", "1", "--out", str(scan_dir)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["simulate", "--sample", "D99", "--out", str(scan_dir.parent / "x")]) == 2
    assert "D99" in capsys.readouterr().err
    assert main(["simulate", "--projections", "0", "--out", str(scan_dir.parent / "y")]) == 2
    assert "projections" in capsys.readouterr().err
    assert main(["simulate", "--size-spread", "wide", "--out", str(scan_dir.parent / "z")]) == 2
    assert "--size-spread" in capsys.readouterr().err
    assert main(["simulate", "--sample", "Fe-exp", "--size-spread", "paper",
                 "--out", str(scan_dir.parent / "z")]) == 2
    assert "no grain-size spread for 'Fe-exp'" in capsys.readouterr().err
    assert not any((scan_dir.parent / name).exists() for name in "xyz")


def test_paper_size_spread_preset():
    from labdct_live.simulation.presets import PAPER_SIZE_SPREAD, preset

    spec, _ = preset("D35", size_spread="paper")
    assert spec.size_spread == PAPER_SIZE_SPREAD["D35"] == pytest.approx(8.2 / 35.8)
    assert preset("D35")[0].size_spread == 0 and preset("D35", 0.3)[0].size_spread == 0.3


def test_the_library_writer_never_replaces_a_folder_it_did_not_write(tmp_path):
    """``write_simulated_scan(..., overwrite=True)`` replaces an earlier scan folder, never a
    folder of the user's (no labdct-live marker)."""
    from labdct_live.acquisition.detector import scaled_geometry
    from labdct_live.io.output import OutputFolderError
    from labdct_live.simulation.scanfolder import write_simulated_scan

    spec, geometry = preset("D18")
    geometry = scaled_geometry(geometry, (64, 64)).with_(n_projections=2)
    sample = make_sample(spec, seed=1)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputFolderError, match="not written by labdct-live"):
        write_simulated_scan(mine, sample, geometry, overwrite=True, progress=False)
    assert (mine / "thesis.tex").read_text() == "years of work"
    scan = write_simulated_scan(tmp_path / "scan", sample, geometry, progress=False)
    assert write_simulated_scan(scan, sample, geometry, overwrite=True, progress=False) == scan
    assert len(SimulatedScan.open(scan)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "scan"]  # no partial left
