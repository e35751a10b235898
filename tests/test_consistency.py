"""The ground-truth-free quality score (segmentation.consistency, segmentation.friedel) on
simulated scans, the instrument file (simulation.instrument) and ``evaluate --no-truth``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from labdct_live.acquisition.detector import scaled_geometry
from labdct_live.segmentation.consistency import fit_mirror_row, recurrence, score_scan, static_map
from labdct_live.segmentation.friedel import (
    frame_spots,
    friedel_match,
    friedel_mirror,
    friedel_pairs,
    friedel_shift_bound,
    mirror_about_row,
)
from labdct_live.simulation.background import beam_center_pixel
from labdct_live.simulation.forward import Simulator
from labdct_live.simulation.geometry import Geometry
from labdct_live.simulation.instrument import (
    Instrument,
    InstrumentFileError,
    instrument_from_dict,
    load_instrument,
)
from labdct_live.simulation.microstructure import SampleSpec, make_sample

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "iron_ff_labdct.yaml"
OMEGAS = np.arange(-180.0, 180.0, 30.0)  # 12 frames, 6 Friedel pairs
TOL, SHIFT = 4.0, 30.0


@pytest.fixture(scope="module")
def scan():
    """Twelve 256² projections of a tiny 8-grain Al sample, 30° apart, with true labels."""
    geometry = scaled_geometry(Geometry(), (256, 256))
    sim = Simulator(make_sample(SampleSpec("Al", 0.06, 0.06, n_grains=8, name="tiny"), seed=1),
                    geometry)
    masks = [sim.project(w).labels > 0 for w in OMEGAS]
    return geometry, masks, sim


def _random_blobs(masks, seed=0):
    """As many 3x3 blobs per frame as the frame has true spots, at random places."""
    rng = np.random.default_rng(seed)
    out = []
    for m in masks:
        n = ndimage.label(m)[1]
        z = np.zeros_like(m)
        rc = rng.integers(0, m.shape[0], (n, 2))
        z[rc[:, 0], rc[:, 1]] = True
        out.append(ndimage.binary_dilation(z, iterations=1))
    return out


def _score(geometry, masks, **kw):
    return score_scan(masks, OMEGAS, beam_center_pixel(geometry)[0], tolerance=TOL,
                      control_shift=SHIFT, exclude=geometry.beamstop_mask(), **kw)


def test_friedel_pairs_of_the_iron_scan():
    omegas = 180.0 - 3.0 * np.arange(121)
    pairs = friedel_pairs(omegas)
    assert len(pairs) == 61 and pairs[0] == (0, 60) and pairs[-1] == (60, 120)
    assert friedel_pairs([0.0, 90.0, 179.0]) == []


def test_the_geometry_mirror_is_the_row_mirror_without_tilt_and_bends_with_it():
    g = Geometry(lss=100, lsd=100, detector_shape=(512, 512), pixel_size=0.1,
                 center=(250.0, 260.0))
    rows, cols = np.array([10.0, 100.0, 400.0]), np.array([20.0, 300.0, 500.0])
    r2, c2 = friedel_mirror(g)(rows, cols)
    r1, c1 = mirror_about_row(250.0)(rows, cols)
    np.testing.assert_allclose(r2, r1, atol=1e-9)
    np.testing.assert_allclose(c2, c1, atol=1e-9)
    r3, _ = friedel_mirror(g.with_(tilt=(0.0, 2.0, 0.0)))(rows, cols)
    assert np.abs(r3 - r1).max() > 1.0  # a tilted detector is not mirror-symmetric


def test_true_spots_are_friedel_consistent(scan):
    geometry, masks, _ = scan
    s = _score(geometry, masks).summary
    assert s.n_pairs == 6 and s.spots_per_frame > 10
    assert s.share > 0.8, s
    assert s.consistent_per_frame > 0.8 * s.spots_per_frame


def test_random_blobs_score_about_zero(scan):
    geometry, masks, _ = scan
    s = _score(geometry, _random_blobs(masks)).summary
    assert abs(s.share) < 0.15, s
    # the same count of components: the share, not the number, tells them apart
    assert s.spots_per_frame == pytest.approx(_score(geometry, masks).summary.spots_per_frame,
                                              rel=0.2)


def test_a_wrong_mirror_row_loses_the_matches_and_the_fit_finds_the_row(scan):
    geometry, masks, _ = scan
    row0 = beam_center_pixel(geometry)[0]
    spots = [frame_spots(m) for m in masks]
    good = friedel_match(spots[0], spots[6], row0, TOL, SHIFT)
    bad = friedel_match(spots[0], spots[6], row0 + 15, TOL, SHIFT)
    assert good.consistent > 0.75 * good.spots and bad.consistent < 0.3 * good.consistent
    row, count = fit_mirror_row(spots, OMEGAS, row0 + 6, search=8, step=1.0, tolerance=TOL,
                                control_shift=SHIFT)
    assert abs(row - row0) <= 1.5 and count > 10


def test_static_structure_is_flagged_and_lowers_the_share(scan):
    geometry, masks, _ = scan
    streak = np.zeros(masks[0].shape, bool)
    streak[20:24, 30:120] = True  # a static streak and its mirror image: symmetric
    streak[256 - 24 - 1:256 - 20 - 1, 30:120] = True
    dirty = [m | streak for m in masks]
    fraction = static_map(dirty)
    assert fraction[22, 60] == 1.0 and (fraction >= 0.9).sum() >= streak.sum()
    clean, s = _score(geometry, masks).summary, _score(geometry, dirty).summary
    assert s.static_spots_per_frame >= 2
    assert s.static_pixels >= streak.sum()
    # the symmetric streaks are never matched: the consistent count stays, the share drops
    assert s.consistent_per_frame <= clean.consistent_per_frame + 0.5
    assert s.share < clean.share
    # without the static check the mirror-symmetric streaks would count as Friedel pairs
    off = _score(geometry, dirty, static_fraction=2.0).summary
    assert off.consistent_per_frame > s.consistent_per_frame + 1


def test_recurrence_over_fine_omega_steps(scan):
    geometry, _, sim = scan
    fine = [sim.project(w).labels > 0 for w in (10.0, 10.05, 10.1)]
    spots = frame_spots(fine[1])
    hits, control = recurrence(spots, [fine[0], fine[2]], control_shift=int(SHIFT))
    assert hits >= 0.8 * len(spots) and control < 0.3 * len(spots)
    noise = _random_blobs(fine)
    hits, control = recurrence(frame_spots(noise[1]), [noise[0], noise[2]],
                               control_shift=int(SHIFT))
    assert hits - control < 0.3 * len(spots)


def test_shift_bound_grows_with_the_sample():
    g = Geometry(lss=100, lsd=100, detector_shape=(1024, 1024), pixel_size=0.068334,
                 beamstop=(419, 609, 419, 609))
    small, large = friedel_shift_bound(g, 0.05), friedel_shift_bound(g, 0.5)
    assert 0 < small < large and large == pytest.approx(10 * small, rel=0.3)


def test_friedel_match_refuses_a_control_that_finds_the_mates(scan):
    _, masks, _ = scan
    s = frame_spots(masks[0])
    with pytest.raises(ValueError, match="control_shift"):
        friedel_match(s, s, 127.5, tolerance=10, control_shift=15)


# ----------------------------------------------------------------------- instrument file
def test_example_instrument_file_describes_the_iron_scan():
    inst = load_instrument(EXAMPLE)
    g = inst.geometry
    assert g.detector_shape == (1024, 1024) and g.pixel_size == pytest.approx(0.068334)
    assert len(inst.omegas) == 121 and inst.omegas[0] == 180 and inst.omegas[-1] == -180
    assert len(friedel_pairs(inst.omegas)) == 61 and inst.material == "Fe"
    row, col = inst.beam_center
    assert 400 < row < 624 and 400 < col < 624  # near the middle, behind the beam stop
    assert g.in_beamstop(row, col)
    assert 20 < g.max_two_theta() < 35  # far field: ~26° at the corners
    # a predicted Friedel mate of a spot above the beam stop lands below it
    r2, c2 = friedel_mirror(g)(np.array([200.0]), np.array([512.0]))
    assert 800 < r2[0] < 860 and abs(c2[0] - 512) < 1


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_instrument_round_trip(tmp_path, suffix):
    inst = Instrument(Geometry(lss=50, lsd=120, detector_shape=(300, 400), pixel_size=0.05,
                               center=(140.5, 210.0), beamstop=(120, 160, 190, 230),
                               tilt=(0.1, -0.2, 0.0), kvp=90),
                      omegas=np.array([0.0, 1.0, 5.0, 180.0]), material="Al", binning=4,
                      name="t", sample_radius_mm=0.4)
    back = load_instrument(inst.to_file(tmp_path / f"i{suffix}"))
    assert back.geometry.lss == 50 and back.geometry.detector_shape == (300, 400)
    assert back.geometry.center == (140.5, 210.0) and back.geometry.beamstop == (120, 160, 190,
                                                                                 230)
    np.testing.assert_allclose(back.omegas, inst.omegas)
    assert back.binning == 4 and back.material == "Al" and back.sample_radius_mm == 0.4
    assert back.geometry.pixel_size == pytest.approx(0.05)


def _good() -> dict:
    return {"distances": {"source_sample_mm": 100, "sample_detector_mm": 100},
            "detector": {"shape": [64, 64], "pixel_size_mm": 0.05, "binning": 2,
                         "beam_center": [31.5, 31.5], "beamstop": [28, 35, 28, 35]},
            "rotation": {"omega_start_deg": 0, "omega_step_deg": 3, "n_frames": 120},
            "sample": {"material": "Fe"}}


@pytest.mark.parametrize("change, field", [
    (lambda d: d["distances"].pop("sample_detector_mm"), "distances.sample_detector_mm"),
    (lambda d: d["distances"].update(source_sample_mm=-1), "distances.source_sample_mm"),
    (lambda d: d["detector"].update(beam_center=[100, 3]), "detector.beam_center"),
    (lambda d: d["detector"].update(beamstop=[28, 35, 28]), "detector.beamstop"),
    (lambda d: d["detector"].update(beamstop=[28, 99, 28, 35]), "detector.beamstop"),
    (lambda d: d["detector"].update(binning=0), "detector.binning"),
    (lambda d: d["detector"].update(pixel_sise_mm=1), "detector.pixel_sise_mm"),
    (lambda d: d["rotation"].update(n_frames="many"), "rotation.n_frames"),
    (lambda d: d["rotation"].update(omegas_deg=[1, 2]), "omegas_deg"),
    (lambda d: d["sample"].update(material="Unobtainium"), "sample.material"),
    (lambda d: d.update(colour="red"), "colour"),
    (lambda d: d.pop("rotation"), "rotation"),
])
def test_instrument_errors_name_the_field(change, field):
    d = _good()
    instrument_from_dict(d)
    change(d)
    with pytest.raises(InstrumentFileError, match=field.replace(".", r"\.")):
        instrument_from_dict(d)


def test_instrument_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("distances: [1, 2\n")
    with pytest.raises(InstrumentFileError, match="bad.yaml.*YAML"):
        load_instrument(bad)
    with pytest.raises(InstrumentFileError, match="cannot read"):
        load_instrument(tmp_path / "missing.json")
    (tmp_path / "i.txt").write_text("{}")
    with pytest.raises(InstrumentFileError, match=".yaml, .yml or .json"):
        load_instrument(tmp_path / "i.txt")


# ----------------------------------------------------------------- evaluate --no-truth
def test_evaluate_no_truth_prints_the_table_and_writes_json(scan, tmp_path, capsys):
    from labdct_live.cli import main

    geometry, masks, _ = scan
    folder = tmp_path / "masks"
    folder.mkdir()
    for i, m in enumerate(masks):
        tifffile.imwrite(folder / f"m_{i:03d}.tif", np.where(m, 255, 0).astype(np.uint8))
    inst = Instrument(geometry.with_(omega_start=-180.0, omega_step=30.0, n_projections=12),
                      omegas=OMEGAS, material="Al")
    path = inst.to_file(tmp_path / "inst.yaml")
    out = tmp_path / "score.json"
    status = main(["evaluate", "--no-truth", str(folder), "--instrument", str(path),
                   "--tolerance", str(TOL), "--control-shift", str(SHIFT),
                   "--json", str(out)])
    assert status == 0
    text = capsys.readouterr().out
    assert "share" in text and "frame_a" in text
    result = json.loads(out.read_text())
    assert result["summary"]["share"] > 0.8 and len(result["pairs"]) == 6
    assert len(result["frames"]) == 12
    # a folder whose frame count does not match the instrument's angles is refused
    (folder / "m_012.tif").write_bytes((folder / "m_000.tif").read_bytes())
    assert main(["evaluate", "--no-truth", str(folder), "--instrument", str(path)]) == 2


# ------------------------------------------------------------ the real frames (optional)
def test_benchmark_skips_without_the_real_frames(monkeypatch, capsys):
    import importlib.util

    monkeypatch.delenv("LABDCT_REAL_DATA", raising=False)
    spec = importlib.util.spec_from_file_location("real_frames",
                                                  ROOT / "benchmarks" / "real_frames.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([]) == 0
    assert "skipped: set LABDCT_REAL_DATA" in capsys.readouterr().out


def test_real_iron_frames_are_friedel_consistent_with_the_example_instrument():
    import os

    folder = os.environ.get("LABDCT_REAL_DATA")
    if not folder or not Path(folder).is_dir():
        pytest.skip("set LABDCT_REAL_DATA to the FF_LabDCT_pure_iron folder of "
                    "github.com/YubinZhang/Indexing_ff_LabDCT_DBB to run this test")
    from labdct_live.io.frames import natural_key, read_frame
    from labdct_live.segmentation.threshold import remove_small_components

    inst = load_instrument(EXAMPLE)
    files = sorted(Path(folder).glob("Iron_sample_tomo-B_Export*.tiff"),
                   key=lambda p: natural_key(p.name))
    assert len(files) == len(inst.omegas)
    median = np.median(np.stack([read_frame(f) for f in files[::4]]), axis=0)
    chosen = [*range(0, 6), *range(60, 66)]  # six Friedel pairs
    masks = []
    for k in chosen:
        m = read_frame(files[k]).astype(np.float32) - median > 150
        m[inst.beamstop_mask()] = False
        masks.append(remove_small_components(m, 3)[0])
    result = score_scan(masks, inst.omegas[chosen], friedel_mirror(inst.geometry),
                        exclude=inst.beamstop_mask(), static_fraction=2.0)
    assert result.summary.n_pairs == 6
    assert result.summary.share > 0.2 and result.summary.consistent_per_frame > 40
    # the same masks scored with a mirror 20 rows off lose the pairs
    off = score_scan(masks, inst.omegas[chosen], inst.beam_center[0] + 20,
                     exclude=inst.beamstop_mask(), static_fraction=2.0)
    assert off.summary.consistent_per_frame < 0.2 * result.summary.consistent_per_frame


def test_segment_takes_the_beam_stop_from_the_instrument_file(tmp_path):
    from labdct_live.cli import main

    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(3)
    for i in range(12):
        frame = rng.poisson(600, (64, 64)).astype(np.uint16)
        frame[20 + i:23 + i, 20:23] += 3000  # a spot moving inside the beam stop
        frame[5:8, 40 + i:43 + i] += 3000  # and one outside it
        tifffile.imwrite(frames / f"f_{i:02d}.tif", frame)
    geometry = Geometry(lss=100, lsd=100, detector_shape=(64, 64), pixel_size=0.07,
                        beamstop=(16, 34, 16, 34))
    path = Instrument(geometry, omegas=np.arange(12) * 30.0).to_file(tmp_path / "i.json")
    out = tmp_path / "masks"
    assert main(["segment", str(frames), str(out), "--instrument", str(path)]) == 0
    settings = json.loads((out / "segmentation.json").read_text())
    assert settings["beamstop"] == f"--instrument {path}"
    mask = tifffile.imread(out / "f_00.tif")
    assert not mask[16:35, 16:35].any() and mask[5:8, 40:43].any()
    # an instrument file for other frames is refused, naming the field
    wrong = Instrument(geometry.with_(detector_shape=(64, 80), beamstop=(16, 34, 16, 34)),
                       omegas=np.arange(12) * 30.0).to_file(tmp_path / "w.json")
    assert main(["segment", str(frames), str(tmp_path / "m2"), "--instrument", str(wrong)]) == 2
    assert not (tmp_path / "m2").exists()
