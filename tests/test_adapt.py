"""``labdct-live adapt`` on a small simulated "user instrument" (a few seconds of training).

The user's scan: Fe spots simulated in a 160² detector's own geometry, on a structured,
static background of ~600 counts (a procedural background: beam-stop streaks, glow, 0.4 %
static hot pixels) with a known detector noise (offset 100, gain 2 counts/photon, read noise
5 counts, zingers), 12
frames over 360° (6 Friedel pairs). Held-out frames of the same instrument (two more Friedel
pairs, with their simulator labels) compare the adapted model with the shipped one by the
Friedel score and by spot F1.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from labdct_live.io.tiff import write_tiff_atomic
from labdct_live.simulation.background import background_for_geometry
from labdct_live.simulation.forward import Simulator
from labdct_live.simulation.geometry import Geometry
from labdct_live.simulation.instrument import Instrument, load_instrument
from labdct_live.simulation.microstructure import SampleSpec, make_sample
from labdct_live.training.noise_model import NoiseModel, estimate_noise, stack_median

SHAPE = (160, 160)
N_FRAMES = 12
TRUE_NOISE = NoiseModel(offset=100.0, gain=2.0, read_noise=5.0, zinger_rate=400.0,
                        zinger_size=1.5, zinger_height=3000.0)


def _geometry() -> Geometry:
    return Geometry(lss=13.0, lsd=13.0, detector_shape=SHAPE, pixel_size=0.03,
                    center=(80.0, 80.0), beamstop=(64, 96, 64, 96), omega_start=0.0,
                    omega_step=360.0 / N_FRAMES, n_projections=N_FRAMES, kvp=150.0)


def _frame(projection, background: np.ndarray, rng, scale: float) -> np.ndarray:
    clean = background + np.float32(scale) * projection.clean
    return np.rint(TRUE_NOISE.apply(clean, rng)).astype(np.uint16)


@pytest.fixture(scope="module")
def user_scan(tmp_path_factory):
    """Folder of frames, instrument file, held-out frames with labels."""
    root = tmp_path_factory.mktemp("user")
    geometry = _geometry()
    instrument = Instrument(geometry, omegas=geometry.omegas, material="Fe", name="test")
    instrument_file = instrument.to_file(root / "instrument.yaml")
    sample = make_sample(SampleSpec("Fe", 0.15, 0.15, n_grains=40), seed=3)
    simulator = Simulator(sample, geometry)
    level = 500.0
    background = TRUE_NOISE.offset + level * background_for_geometry(geometry, seed=5).render()
    rng = np.random.default_rng(0)
    hot = rng.random(SHAPE) < 0.004  # static hot pixels, the same in every frame
    background[hot] += rng.uniform(300, 1500, int(hot.sum())).astype(np.float32)
    projections = [simulator.project(float(w)) for w in geometry.omegas]
    peak = np.percentile(np.concatenate([p.clean[p.labels > 0] for p in projections]), 50)
    scale = float(6 * 47 / max(peak, 1e-6))  # median spot pixel ~ 6 noise SDs
    frames_dir = root / "frames"
    frames_dir.mkdir()
    frames = []
    for k, p in enumerate(projections):
        frame = _frame(p, background, rng, scale)
        frames.append(frame)
        write_tiff_atomic(frames_dir / f"frame_{k:03d}.tif", frame)
    held_out = []
    for w in (15.0, 105.0, 195.0, 285.0):  # two Friedel pairs
        p = simulator.project(w)
        held_out.append((_frame(p, background, rng, scale), p.labels))
    return {"root": root, "frames_dir": frames_dir, "instrument": instrument_file,
            "frames": np.stack(frames), "held_out": held_out}


def test_noise_model_recovers_the_detector(user_scan):
    frames = user_scan["frames"]
    exclude = load_instrument(user_scan["instrument"]).beamstop_mask()
    noise = estimate_noise(frames, exclude=exclude)
    true_sd = float(TRUE_NOISE.sd(np.median(stack_median(frames)[~exclude])))
    assert noise.noise_at_median == pytest.approx(true_sd, rel=0.15)
    assert noise.gain == pytest.approx(TRUE_NOISE.gain, rel=0.35)
    assert noise.zinger_rate > 0
    again = NoiseModel.from_dict(json.loads(json.dumps(noise.to_dict())))
    assert again == noise


def test_noise_model_apply_has_the_stated_moments():
    model = NoiseModel(offset=100.0, gain=2.0, read_noise=5.0)
    x = model.apply(np.full((400, 400), 600.0, np.float32), np.random.default_rng(1))
    assert x.mean() == pytest.approx(600.0, rel=0.01)
    assert x.std() == pytest.approx(np.sqrt(2.0 * 500 + 25), rel=0.03)
    correlated = NoiseModel(offset=100.0, gain=2.0, read_noise=5.0, correlation=0.3)
    x = correlated.apply(np.full((400, 400), 600.0, np.float32), np.random.default_rng(2))
    r = x - x.mean()
    assert x.std() == pytest.approx(np.sqrt(2.0 * 500 + 25), rel=0.03)
    assert float((r[1:] * r[:-1]).mean() / (r * r).mean()) == pytest.approx(0.3, abs=0.03)


def _spot_f1(masks, held_out) -> float:
    from labdct_live.segmentation.metrics import detection_scores, match_spots
    from labdct_live.segmentation.spots import label_spots

    tp = n_pred = n_truth = 0
    for mask, (_, labels) in zip(masks, held_out):
        counts = detection_scores(*_tables(match_spots(labels, label_spots(mask)[0],
                                                       with_boundary_error=False)))
        tp, n_pred, n_truth = tp + counts["tp"], n_pred + counts["n_pred"], n_truth + counts[
            "n_truth"]
    return 2 * tp / max(n_pred + n_truth, 1)


def _tables(match):
    return match.truth, match.pred


def test_adapt_runs_and_is_not_worse_than_the_shipped_model(user_scan, capsys):
    from labdct_live.cli import main
    from labdct_live.methods import DLMethod, make_method
    from labdct_live.models.adapt import score_subset

    out = user_scan["root"] / "adapted.pt"
    status = main(["adapt", str(user_scan["frames_dir"]), "--instrument",
                   str(user_scan["instrument"]), "--out", str(out), "--max-steps", "40",
                   "--val-every", "20", "--projections", "4", "--crop", "64",
                   "--batch-size", "8", "--lr", "1e-3", "--score-pairs", "6", "--no-progress",
                   "--json", str(user_scan["root"] / "report.json")])
    assert status == 0
    printed = capsys.readouterr().out
    assert "score before" in printed and "score after" in printed

    checkpoint = torch.load(out, weights_only=True)
    report = checkpoint["metrics"]["adapt"]
    assert report["frames"]["count"] == N_FRAMES
    assert report["frames"]["names"][0] == "frame_000.tif"
    assert report["noise_model"]["gain"] > 0
    assert report["score_before"]["threshold"] == pytest.approx(0.3)
    assert report["score_after"]["share"] >= 0.5  # the rule's constraint, met here
    assert report["weights"] in ("adapted", "base")
    # on the frames that chose it, about as good as the shipped model fed raw frames with
    # its defaults (that setting is not among the choices, so not exactly: within 5 %)
    before, after = report["score_before"], report["score_after"]
    if before["share"] >= 0.5:
        assert after["consistent_per_frame"] >= 0.95 * before["consistent_per_frame"]
    else:
        assert after["share"] > before["share"]
    assert checkpoint["inference"]["input"] == "static"
    assert tuple(checkpoint["inference"]["static_background"].shape) == SHAPE
    assert 0 < checkpoint["inference"]["threshold"] < 1
    assert checkpoint["training"]["steps_done"] == 40  # the budget allows more: the cap holds

    held_out = user_scan["held_out"]
    geometry = load_instrument(user_scan["instrument"]).geometry
    exclude = geometry.beamstop_mask()
    shipped = DLMethod(None, exclude=exclude)
    adapted = DLMethod(str(out), exclude=exclude)  # by path, as segment and LiveConfig take it
    assert adapted.static is not None and adapted.threshold == checkpoint["inference"][
        "threshold"]
    # it knows the inputs it was tuned on, and this instrument's frames are among them
    assert adapted.domain is not None and set(checkpoint["metrics"]["input_domain"]) >= {
        "noise", "correlation", "structure", "bright_fraction"}
    frame = np.asarray(held_out[0][0], np.float32)
    assert adapted.domain(frame - adapted.static.current(frame), exclude) == {}
    live = make_method("dl", model=str(out), exclude=exclude)  # LiveConfig.method_options
    assert live.static is not None and live.min_contrast == adapted.min_contrast
    masks = {"shipped": [shipped.segment_frame(f)[0] for f, _ in held_out],
             "adapted": [adapted.segment_frame(f)[0] for f, _ in held_out]}
    omegas = [15.0, 105.0, 195.0, 285.0]
    score = {k: score_subset(m, omegas, geometry, exclude) for k, m in masks.items()}
    f1 = {k: _spot_f1(m, held_out) for k, m in masks.items()}
    # more Friedel-consistent spots on frames it has not seen, at a share still >= 0.4
    assert score["adapted"]["consistent_per_frame"] >= score["shipped"]["consistent_per_frame"]
    assert score["adapted"]["share"] >= 0.4, score
    # and the simulator's labels do not contradict it by much (a few seconds of training)
    assert f1["adapted"] >= f1["shipped"] - 0.1, f1


def test_score_subset_counts_as_score_scan():
    from labdct_live.models.adapt import score_subset
    from labdct_live.segmentation.consistency import score_scan
    from labdct_live.segmentation.friedel import friedel_mirror

    geometry = _geometry()
    rng = np.random.default_rng(4)
    masks = [rng.random(SHAPE) > 0.97 for _ in range(N_FRAMES)]
    for m in masks[::2]:
        m[10:14, 10:14] = True  # a static spot
    lean = score_subset(masks, geometry.omegas, geometry, geometry.beamstop_mask())
    full = score_scan(masks, geometry.omegas, friedel_mirror(geometry),
                      exclude=geometry.beamstop_mask()).summary
    assert lean["consistent_per_frame"] == pytest.approx(full.consistent_per_frame)
    assert lean["share"] == pytest.approx(full.share)
    assert lean["spots_per_frame"] == pytest.approx(full.spots_per_frame)


def test_adapt_refuses_bad_input_in_one_line(user_scan, tmp_path, capsys):
    from labdct_live.cli import main

    status = main(["adapt", str(tmp_path / "nowhere"), "--instrument",
                   str(user_scan["instrument"]), "--out", str(tmp_path / "m.pt")])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("labdct-live adapt: error:") and "\n" not in err
    status = main(["adapt", str(user_scan["frames_dir"]), "--instrument",
                   str(user_scan["instrument"]), "--out", str(tmp_path / "m.pt"),
                   "--minutes", "0"])
    assert status == 2
    assert "--minutes must be positive" in capsys.readouterr().err
    status = main(["adapt", str(user_scan["frames_dir"]), "--instrument",
                   str(user_scan["instrument"]), "--out", str(tmp_path / "m.pt"),
                   "--max-steps", "0"])
    assert status == 2
    assert "--max-steps must be positive" in capsys.readouterr().err
