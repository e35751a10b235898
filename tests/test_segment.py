"""The standard routine, spot tables, one-threshold segmentation and `labdct-live segment`."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage as ndi

from labdct_live.cli import main
from labdct_live.segmentation.metrics import match_spots
from labdct_live.segmentation.rolling_median import (
    RollingMedianSubtractor,
    RoutineParameterError,
    StackTooShortError,
    _batcher_network,
    _median_network,
    subtract_rolling_median,
)
from labdct_live.segmentation.routine import RoutineParams, StandardRoutine, standard_routine
from labdct_live.segmentation.snr import spot_snr
from labdct_live.segmentation.spots import as_labels, label_spots, spot_table
from labdct_live.segmentation.threshold import threshold_segment


# ------------------------------------------------------------------------ constructed data
def gaussian_spot_stack(n_frames=11, shape=(160, 160), n_spots=12, seed=0):
    """Frames with Gaussian spots (new positions every frame) on a smooth background, Poisson
    noise; truth labels are the pixels where a spot is >= 10 % of its peak."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    background = (300 + 200 * cols / shape[1]
                  + 100 * np.exp(-((rows - 80) ** 2 + (cols - 80) ** 2) / 3000))
    frames, labels = [], []
    for _ in range(n_frames):
        clean = np.zeros(shape)
        lab = np.zeros(shape, np.int32)
        centres = []
        while len(centres) < n_spots:
            c = rng.uniform(10, shape[0] - 10, 2)
            if all(np.hypot(*(c - d)) > 16 for d in centres):
                centres.append(c)
        for k, (r0, c0) in enumerate(centres, 1):
            amp, sd = rng.uniform(20, 1500), rng.uniform(1.2, 2.5)
            spot = amp * np.exp(-((rows - r0) ** 2 + (cols - c0) ** 2) / (2 * sd * sd))
            clean += spot
            lab[spot >= 0.1 * amp] = k
        frames.append(rng.poisson(background + clean).astype(np.uint16))
        labels.append(lab)
    return np.stack(frames), np.stack(labels)


def reference_rolling_median(stack, window, circular, exclude):
    n, h = len(stack), window // 2
    out = np.empty(stack.shape, np.float32)
    for i in range(n):
        if circular:
            idx = [(i + k) % n for k in range(-h, h + 1)]
        else:
            start = min(max(i - h, 0), n - window)
            idx = list(range(start, start + window))
        out[i] = stack[i].astype(np.float32) - np.median(stack[idx].astype(np.float32), axis=0)
        out[i][exclude] = 0
    return out


# ---------------------------------------------------------------------------- parameters
def test_defaults_are_the_public_code_values_and_older_variant():
    p = RoutineParams()
    assert (p.window, p.background, p.sigma, p.percent, p.min_size) == (11, 5, 6, 0.10, 10)
    assert RoutineParams.preset("paper") == p
    old = RoutineParams.older_variant()
    assert (old.sigma, old.min_size, old.background, old.percent) == (0.5, 2, 5, 0.10)


@pytest.mark.parametrize("change", [dict(window=10), dict(window=1), dict(background=-1),
                                    dict(sigma=0), dict(percent=1.0), dict(min_size=0),
                                    dict(min_size=2.5)])
def test_invalid_parameters_are_rejected(change):
    with pytest.raises(RoutineParameterError, match=next(iter(change))):
        RoutineParams(**change)


# ------------------------------------------------------------------------ rolling median
@pytest.mark.parametrize("n", range(2, 14))
def test_sorting_network_sorts_every_binary_input(n):
    """0-1 principle: a comparator network sorting all 2^n binary inputs sorts everything."""
    pairs = _batcher_network(n)
    for bits in itertools.product((0, 1), repeat=n):
        v = list(bits)
        for a, b in pairs:
            if v[a] > v[b]:
                v[a], v[b] = v[b], v[a]
        assert v == sorted(bits)
    if n % 2:
        pruned = _median_network(n)
        assert len(pruned) <= len(pairs)
        for bits in itertools.product((0, 1), repeat=n):
            v = list(bits)
            for a, b in pruned:
                if v[a] > v[b]:
                    v[a], v[b] = v[b], v[a]
            assert v[n // 2] == sorted(bits)[n // 2]


@pytest.mark.parametrize("window", [3, 5, 11])
@pytest.mark.parametrize("circular", [True, False])
@pytest.mark.parametrize("dtype", [np.uint16, np.float64, np.int32])
def test_rolling_median_equals_reference(window, circular, dtype):
    rng = np.random.default_rng(window)
    stack = rng.integers(0, 4000, (14, 9, 7)).astype(dtype)
    exclude = np.zeros((9, 7), bool)
    exclude[3:5, 2:6] = True
    got = subtract_rolling_median(stack, window, circular, exclude)
    np.testing.assert_array_equal(got, reference_rolling_median(stack, window, circular, exclude))
    assert np.all(got[:, exclude] == 0)


def test_stream_emits_each_frame_when_its_window_is_complete():
    window, n = 5, 9
    sub = RollingMedianSubtractor(window, circular=True)
    emitted = []
    for j in range(n):
        emitted.append([i for i, _ in sub.push(np.full((4, 4), j * j, np.uint16))])
    # frame i comes out with frame i + 2; frames 0, 1 wait for the wrap at the end
    assert emitted == [[], [], [], [], [2], [3], [4], [5], [6]]
    assert [i for i, _ in sub.finish()] == [7, 8, 0, 1]
    with pytest.raises(RuntimeError, match="after finish"):
        sub.push(np.zeros((4, 4)))


def test_circular_wrap_uses_frames_from_the_other_end():
    """Frame 0 of a 360° scan: its window is frames n-2, n-1, 0, 1, 2."""
    stack = np.zeros((8, 1, 1))
    stack[:, 0, 0] = [20, 0, 0, 5, 5, 5, 100, 100]
    out = subtract_rolling_median(stack, 5, circular=True)[:, 0, 0]
    assert out[0] == 20 - 20  # frames 6, 7, 0, 1, 2: median of {100, 100, 20, 0, 0}
    assert out[7] == 100 - 20  # frames 5, 6, 7, 0, 1: median of {5, 100, 100, 20, 0}
    shifted = subtract_rolling_median(stack, 5, circular=False)[:, 0, 0]
    assert shifted[0] == 20 - 5 and shifted[7] == 100 - 5  # frames 0..4 and 3..7


def test_stack_shorter_than_window_is_a_clear_error():
    with pytest.raises(StackTooShortError, match="4 frame.*window of 5"):
        subtract_rolling_median(np.zeros((4, 6, 6)), window=5)
    with pytest.raises(StackTooShortError):
        standard_routine(np.zeros((10, 6, 6)))  # default window 11


def test_stream_rejects_frames_of_another_shape():
    sub = RollingMedianSubtractor(3)
    sub.push(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="shape"):
        sub.push(np.zeros((4, 5)))


# -------------------------------------------------------------------------- the routine
def test_routine_finds_every_high_snr_spot_of_constructed_frames():
    frames, labels = gaussian_spot_stack()
    params = RoutineParams(background=100, sigma=1.0, percent=0.2, min_size=6)
    masks, spots = standard_routine(frames, params)
    assert masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
    truths, preds = [], []
    for i in range(len(frames)):
        match = match_spots(labels[i], label_spots(masks[i])[0])
        snr = spot_snr(frames[i], labels[i]).set_index("label")["snr"]
        truths.append(match.truth.assign(snr=match.truth["label"].map(snr)))
        preds.append(match.pred)
    truth, pred = pd.concat(truths), pd.concat(preds)
    strong = truth[truth["snr"] >= 5]
    assert len(strong) > 50
    assert (strong["outcome"] == "matched").all()
    assert (pred["outcome"] == "matched").mean() >= 0.95
    assert len(spots) == len(pred) and (spots.groupby("frame").size() > 0).all()


def test_streaming_results_equal_the_batch_routine():
    frames, _ = gaussian_spot_stack(n_frames=12, shape=(64, 64), n_spots=4, seed=3)
    exclude = np.zeros((64, 64), bool)
    exclude[28:36, 28:36] = True
    params = RoutineParams(background=50, sigma=1.0, min_size=4)
    masks, spots = standard_routine(frames, params, exclude)
    routine = StandardRoutine(params, exclude)
    results = [r for f in frames for r in routine.push(f)] + routine.finish()
    assert sorted(r.index for r in results) == list(range(12))
    for r in results:
        np.testing.assert_array_equal(r.mask, masks[r.index])
        pd.testing.assert_frame_equal(r.spots, spots[spots.frame == r.index]
                                      .drop(columns="frame").reset_index(drop=True))
        assert not r.mask[exclude].any()


def test_percent_threshold_and_both_minimum_size_passes():
    """Step 4 on a hand-made response: A (100) and B (60) joined by a bridge (5) form one
    component; C is a bright but small component; D has only 2 pixels above the threshold."""
    from labdct_live.segmentation.routine import threshold_response

    response = np.zeros((20, 40), np.float32)
    response[8:12, 5:10] = 100  # A, 20 px
    response[10, 10:20] = 5  # bridge
    response[8:12, 20:25] = 60  # B, 20 px
    response[15:17, 30:32] = 500  # C, 4 px: removed by the first size pass
    response[2:4, 30:38] = 5  # D, 16 px ...
    response[2, 30:32] = 100  # ... of which 2 px exceed 10 % of its max: second pass
    mask, labels = threshold_response(response, percent=0.1, min_size=6)
    assert labels.max() == 2
    assert mask.sum() == 40 and mask[8:12, 5:10].all() and mask[8:12, 20:25].all()
    assert labels[9, 6] != labels[9, 21]
    mask, labels = threshold_response(response, percent=0.7, min_size=6)
    assert labels.max() == 1 and mask.sum() == 20 and mask[8:12, 5:10].all()


def test_routine_finds_every_isolated_bright_spot_of_a_simulated_frame():
    pytest.importorskip("labdct_live.simulation.forward")
    from labdct_live.simulation.forward import Simulator
    from labdct_live.simulation.microstructure import make_sample
    from labdct_live.simulation.presets import preset

    spec, geometry = preset("D35")
    # 4x binned detector: same field of view, 16x fewer pixels (fast).
    geometry = geometry.with_(detector_shape=(508, 508), pixel_size=geometry.pixel_size * 4)
    sim = Simulator(make_sample(spec, seed=1), geometry)
    projections = [sim.project(w) for w in np.arange(11) * 2.0]
    rng = np.random.default_rng(0)
    noisy = np.stack([rng.poisson(p.frame.astype(float)).astype(np.uint16)
                      for p in projections])
    exclude = geometry.beamstop_mask()
    masks, _ = standard_routine(noisy, RoutineParams.older_variant(), exclude)
    for i in (0, 5, 10):
        truth = projections[i].labels
        match = match_spots(truth, label_spots(masks[i])[0])
        snr = spot_snr(noisy[i], truth, exclude=exclude).set_index("label")["snr"]
        table = match.truth.assign(snr=match.truth["label"].map(snr))
        # isolated: no other spot within 3 px
        others_near = (ndi.maximum_filter(truth, 7) != truth) | (
            ndi.minimum_filter(np.where(truth > 0, truth, truth.max() + 1), 7) != truth)
        crowded = np.zeros(truth.max() + 1, bool)
        crowded[truth[(truth > 0) & others_near]] = True
        strong = table[table["snr"] >= 10]
        isolated = strong[~crowded[strong["label"]]]
        assert len(isolated) > 50
        assert (isolated["outcome"] == "matched").all()
        # crowded strong spots may be merged into a neighbour, but are almost never missed
        assert (strong["outcome"] != "missed").mean() >= 0.98


# ----------------------------------------------------------------- spot table, threshold
def test_spot_table_closed_form():
    labels = np.zeros((20, 30), np.int32)
    labels[2:4, 5:8] = 4  # 6 px
    labels[10, 20] = 9
    intensity = np.zeros((20, 30))
    intensity[2, 5:8] = 1.0
    intensity[3, 5:8] = 3.0  # weighted centroid row = (2*1 + 3*3) / 4 = 2.75
    intensity[10, 20] = -2.0  # no positive weight: geometric centroid
    t = spot_table(labels, intensity)
    assert list(t["label"]) == [4, 9]
    first = t.iloc[0]
    assert first["area"] == 6 and first["integrated_intensity"] == 12.0
    assert first["peak_intensity"] == 3.0
    assert first["centroid_row"] == pytest.approx(2.75)
    assert first["centroid_col"] == pytest.approx(6.0)
    assert (first["row_start"], first["row_stop"], first["col_start"], first["col_stop"]) == \
        (2, 4, 5, 8)
    second = t.iloc[1]
    assert (second["centroid_row"], second["centroid_col"], second["area"]) == (10, 20, 1)
    assert len(spot_table(np.zeros((4, 4), int), np.zeros((4, 4)))) == 0


def test_threshold_segment():
    image = np.zeros((30, 30))
    image[2:6, 2:6] = 10  # 16 px above threshold
    image[10:12, 10:12] = 10  # 4 px: below min_size
    image[20:25, 20:25] = 10  # in the excluded region
    image[2:6, 20:24] = 5  # at the threshold: not above
    exclude = np.zeros((30, 30), bool)
    exclude[18:28, 18:28] = True
    mask = threshold_segment(image, threshold=5, min_size=5, exclude=exclude)
    assert mask.dtype == np.uint8
    assert mask.sum() == 16 and mask[2:6, 2:6].all()
    with pytest.raises(ValueError, match="min_size"):
        threshold_segment(image, 5, min_size=0)


def test_as_labels_keeps_labels_and_labels_masks():
    labels = np.zeros((6, 6), np.int32)
    labels[0:2, 0:2] = 3
    labels[0:2, 2:4] = 5  # touching, different labels: kept apart
    assert set(np.unique(as_labels(labels))) == {0, 3, 5}
    mask = (labels > 0).astype(np.uint8) * 255
    mask[4, 4] = 255
    assert as_labels(mask).max() == 2


# ----------------------------------------------------------------------------------- CLI
def _write_frames(folder, frames):
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        tifffile.imwrite(folder / f"img_{i}.tif", frame)


def test_cli_segment_writes_masks_with_input_names(tmp_path, capsys):
    frames, _ = gaussian_spot_stack(n_frames=11, shape=(64, 64), n_spots=4, seed=1)
    _write_frames(tmp_path / "in", frames)
    code = main(["segment", str(tmp_path / "in"), str(tmp_path / "out"), "--background", "60",
                 "--sigma", "1", "--min-size", "4", "--beamstop", "0,3,0,3"])
    assert code == 0
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"img_{i}.tif" for i in range(11)]
                           + [".labdct-live-output", "segmentation.json", "spots.csv"])
    masks, spots = standard_routine(
        frames, RoutineParams(background=60, sigma=1, min_size=4),
        exclude=np.pad(np.ones((4, 4), bool), ((0, 60), (0, 60))))
    for i in range(11):
        np.testing.assert_array_equal(tifffile.imread(out / f"img_{i}.tif"), masks[i] * 255)
    table = pd.read_csv(out / "spots.csv")
    assert len(table) == len(spots) and set(table["name"]) <= {f"img_{i}.tif" for i in range(11)}
    settings = json.loads((out / "segmentation.json").read_text())
    assert settings["params"]["sigma"] == 1.0 and settings["beamstop"] == "--beamstop"


def test_cli_segment_multi_frame_stack(tmp_path):
    frames, _ = gaussian_spot_stack(n_frames=11, shape=(48, 48), n_spots=3, seed=2)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "scan.tif", frames, photometric="minisblack")
    assert main(["segment", str(tmp_path / "in"), str(tmp_path / "out"), "--sigma", "1",
                 "--background", "60", "--min-size", "4"]) == 0
    written = tifffile.imread(tmp_path / "out" / "scan.tif")
    masks, _ = standard_routine(frames, RoutineParams(background=60, sigma=1, min_size=4))
    np.testing.assert_array_equal(written, masks * 255)


def test_cli_dl_method_says_what_is_missing(tmp_path, capsys):
    _write_frames(tmp_path / "in", np.zeros((11, 8, 8), np.uint16))
    missing = tmp_path / "no-such-model.pt"
    assert main(["segment", "--method", "dl", "--model", str(missing), str(tmp_path / "in"),
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--method dl" in err and "no-such-model.pt" in err
    assert not (tmp_path / "out").exists()


def _nan_in_last_frame(folder):
    frames = np.ones((11, 8, 8), np.float32)
    frames[-1, 2, 2] = np.nan
    _write_frames(folder, frames)


@pytest.mark.parametrize("make_input, message", [
    (lambda d: _write_frames(d, np.zeros((5, 8, 8), np.uint16)), "fewer than the rolling"),
    (lambda d: d.mkdir(), "no TIFF frames"),
    (lambda d: (d.mkdir(), (d / "a.tif").write_bytes(b"junk")), "cannot be read"),
    (lambda d: _write_frames(d, np.zeros((11, 8, 8), np.complex64)), "complex64"),
    (_nan_in_last_frame, "NaN"),
])
def test_cli_bad_input_leaves_no_output(tmp_path, capsys, make_input, message):
    make_input(tmp_path / "in")
    assert main(["segment", str(tmp_path / "in"), str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in"]  # no temporary folder left over


# --------------------------------------------------------------------------------- tuner
def test_tuner_finds_the_best_grid_point_and_its_scores_are_consistent():
    from labdct_live.segmentation.tune import score_params, tune_routine

    frames, labels = gaussian_spot_stack(n_frames=11, shape=(96, 96), n_spots=8, seed=4)
    corrected = subtract_rolling_median(frames, 11)[:4]
    grid = {"background": (5.0, 100.0), "sigma": (0.5, 1.0), "percent": (0.1, 0.2),
            "min_size": (2, 6)}
    result = tune_routine(corrected, labels[:4], search="grid", grid=grid, progress=False)
    trials = result.trials
    assert len(trials) == 16 and result.best_f1 == trials["f1"].max()
    best = trials.iloc[0]
    assert (result.best.background, result.best.sigma, result.best.percent,
            result.best.min_size) == (best.background, best.sigma, best.percent, best.min_size)
    older = trials[(trials.background == 5) & (trials.sigma == 0.5) & (trials.percent == 0.1)
                   & (trials.min_size == 2)].iloc[0]
    direct = score_params(corrected, labels[:4], RoutineParams.older_variant())
    assert older["f1"] == direct["f1"] and older["tp"] == direct["tp"]
    assert result.best_f1 > older["f1"] + 0.2  # the older variant drowns in noise spots
    again = tune_routine(corrected, labels[:4], n_trials=5, grid=grid, seed=7, progress=False)
    same = tune_routine(corrected, labels[:4], n_trials=5, grid=grid, seed=7, progress=False)
    assert len(again.trials) == 5
    pd.testing.assert_frame_equal(again.trials, same.trials)
    with pytest.raises(RoutineParameterError):
        tune_routine(corrected, labels[:4], grid={**grid, "sigma": (0.0,)}, progress=False)


def test_docs_spot_table_is_the_schema():
    """docs/segmentation.md lists the spot columns as :mod:`labdct_live.segmentation.spot_schema`
    defines
    them (the docs' table cannot drift from the code)."""
    from pathlib import Path

    from labdct_live.segmentation.spot_schema import spot_columns_markdown

    docs = (Path(__file__).parents[1] / "docs" / "segmentation.md").read_text()
    assert spot_columns_markdown() in docs
