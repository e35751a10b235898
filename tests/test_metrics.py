"""Spot matching, detection/pixel scores, reports and `labdct-live evaluate`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from labdct_live.cli import main
from labdct_live.segmentation.metrics import (
    boundary_error,
    detection_scores,
    evaluate_frames,
    match_spots,
    pixel_scores,
    scores_by_snr,
)
from labdct_live.segmentation.report import markdown_table, write_report


def constructed_case():
    """One exact match, one split truth, one merged pair, one missed truth, one false spot."""
    truth = np.zeros((40, 60), np.int32)
    pred = np.zeros((40, 60), np.int32)
    truth[2:6, 2:6] = 1
    pred[2:6, 2:6] = 1  # exact
    truth[10:16, 2:8] = 2
    pred[10:16, 2:5] = 2
    pred[10:16, 5:8] = 3  # truth 2 split in two
    truth[20:24, 2:6] = 3
    truth[20:24, 7:11] = 4
    pred[19:25, 1:12] = 4  # truths 3 and 4 merged
    truth[30:34, 2:6] = 5  # missed
    pred[30:34, 40:44] = 5  # false
    return truth, pred


def test_matching_counts_of_the_constructed_case():
    truth, pred = constructed_case()
    match = match_spots(truth, pred)
    c = match.counts()
    assert (c["n_truth"], c["n_pred"], c["tp"], c["fp"], c["fn"]) == (5, 5, 3, 2, 2)
    assert (c["missed"], c["merged"], c["split"], c["false"]) == (1, 1, 1, 1)
    assert (c["merging_preds"], c["split_truths"]) == (1, 1)
    assert c["precision"] == c["recall"] == c["f1"] == pytest.approx(0.6)
    t = match.truth.set_index("label")
    assert t.loc[1, "outcome"] == "matched" and t.loc[1, "iou"] == 1.0
    assert t.loc[1, "boundary_error"] == 0.0
    assert t.loc[2, "outcome"] == "matched" and t.loc[2, "iou"] == pytest.approx(0.5)
    assert sorted(t.loc[[3, 4], "outcome"]) == ["matched", "merged"]
    assert t.loc[5, "outcome"] == "missed" and t.loc[5, "best_pred"] == 0
    p = match.pred.set_index("label")
    assert sorted(p.loc[[2, 3], "outcome"]) == ["matched", "split"]
    assert p.loc[4, "n_overlaps"] == 2 and p.loc[4, "outcome"] == "matched"
    assert p.loc[5, "outcome"] == "false"


def test_matching_maximises_the_number_of_pairs():
    """Pred 1 overlaps truth 1 (IoU 0.68) and truth 2 (0.26); pred 2 touches truth 1 (0.06).
    Greedy-by-IoU would pair truth 1 with pred 1 and leave one of each unpaired."""
    truth = np.zeros((10, 30), np.int32)
    pred = np.zeros((10, 30), np.int32)
    truth[2:6, 2:10] = 1
    truth[2:6, 10:14] = 2
    pred[2:6, 2:13] = 1
    pred[0:3, 2:4] = 2
    match = match_spots(truth, pred)
    assert match.counts()["tp"] == 2
    t = match.truth.set_index("label")
    assert t.loc[2, "pred"] == 1 and t.loc[1, "pred"] == 2
    assert t.loc[1, "best_pred"] == 1  # largest overlap, though not its partner


def test_min_iou_turns_slight_overlaps_into_misses():
    truth = np.zeros((10, 10), np.int32)
    pred = np.zeros((10, 10), np.int32)
    truth[0:4, 0:4] = 1
    pred[3:7, 3:7] = 1  # 1 shared pixel: IoU 1/31
    assert match_spots(truth, pred).counts()["tp"] == 1
    c = match_spots(truth, pred, min_iou=0.1).counts()
    assert (c["tp"], c["missed"], c["false"]) == (0, 1, 1)


def test_empty_inputs():
    empty = np.zeros((5, 5), np.int32)
    c = match_spots(empty, empty).counts()
    assert (c["n_truth"], c["n_pred"], c["tp"]) == (0, 0, 0) and np.isnan(c["f1"])
    one = empty.copy()
    one[1, 1] = 1
    c = match_spots(one, empty).counts()
    assert c["recall"] == 0 and np.isnan(c["precision"]) and c["f1"] == 0


def test_boundary_error_closed_form():
    small = np.zeros((20, 20), bool)
    small[5:10, 5:10] = True  # 5x5: 16 boundary pixels
    big = np.zeros((20, 20), bool)
    big[4:11, 4:11] = True  # 7x7: 24 boundary pixels, 4 corners sqrt(2) away
    expected = (16 * 1 + 20 * 1 + 4 * np.sqrt(2)) / (16 + 24)
    assert boundary_error(small, big) == pytest.approx(expected)
    assert boundary_error(big, small) == pytest.approx(expected)
    assert boundary_error(small, small) == 0.0
    shifted = np.roll(small, 3, axis=1)  # every boundary pixel's nearest is 3 or fewer away
    assert 0 < boundary_error(small, shifted) <= 3
    assert np.isnan(boundary_error(small, np.zeros_like(small)))


def test_pixel_scores_closed_form():
    t = np.zeros((10, 10), bool)
    p = np.zeros((10, 10), bool)
    t[0:4, 0:5] = True  # 20 px
    p[2:6, 0:5] = True  # 20 px, 10 shared
    s = pixel_scores(t, p)
    assert s["iou"] == pytest.approx(10 / 30) and s["dice"] == pytest.approx(20 / 40)


def test_scores_by_snr_bins():
    truth = pd.DataFrame({"snr": [-0.5, 0.5, 1.5, 1.5, 3.0, np.inf, np.nan],
                          "outcome": ["missed", "matched", "matched", "merged", "matched",
                                      "matched", "matched"]})
    pred = pd.DataFrame({"snr": [0.5, 1.5, 1.5, 3.0, np.inf, 0.2],
                         "outcome": ["matched", "matched", "split", "matched", "matched",
                                     "false"]})
    table = scores_by_snr(truth, pred, bins=(0, 1, 2, 4, np.inf)).set_index("snr_bin")
    assert list(table.index) == ["[0, 1)", "[1, 2)", "[2, 4)", "[4, inf)"]
    assert list(table["n_truth"]) == [2, 2, 1, 1]  # -0.5 joins the first bin; NaN left out
    assert list(table["n_pred"]) == [2, 2, 1, 1]
    assert list(table["tp"]) == [1, 1, 1, 1]
    assert table.loc["[0, 1)", "recall"] == 0.5 and table.loc["[0, 1)", "precision"] == 0.5
    assert table.loc["[1, 2)", "f1"] == pytest.approx(0.5)
    assert table.loc["[4, inf)", "f1"] == 1.0
    with pytest.raises(ValueError, match="increasing"):
        scores_by_snr(truth, pred, bins=(0, 2, 1))


def test_evaluate_frames_pools_frames_and_bins_predictions_by_snr():
    truth, pred = constructed_case()
    rng = np.random.default_rng(0)
    image = rng.normal(100, 5, truth.shape)
    image[truth == 1] += 100  # strong
    image[truth == 5] += 2  # weak, missed
    image[pred == 5] += 50  # the false spot has its own SNR
    ev = evaluate_frames([(truth, pred, image), (truth, truth, None)],
                         bins=(0, 1, 2, 4, 8, 16, np.inf))
    assert ev.summary["tp"] == 3 + 5 and ev.summary["n_truth"] == 10
    assert list(ev.per_frame["tp"]) == [3, 5]
    assert ev.per_frame.loc[1, "pixel_iou"] == 1.0
    t = ev.truth[ev.truth.frame == 0].set_index("label")
    p = ev.pred[ev.pred.frame == 0].set_index("label")
    assert t.loc[1, "snr"] > 16 and t.loc[5, "snr"] < 1
    assert p.loc[1, "snr"] == t.loc[1, "snr"]  # matched: the truth's SNR
    assert 8 < p.loc[5, "snr"] < 16  # false spot: its own SNR
    assert ev.by_snr["n_truth"].sum() == 5  # frame 1 had no image


def test_report_and_markdown(tmp_path):
    truth, pred = constructed_case()
    image = np.random.default_rng(1).normal(100, 5, truth.shape) + 30 * (truth > 0)
    ev = evaluate_frames([(truth, pred, image)])
    report = write_report(tmp_path / "rep", {"a": ev, "b": ev}, context={"command": "x"})
    text = report.read_text()
    assert "| F1 | 0.600 | 0.600 |" in text and "| true positives | 3 | 3 |" in text
    assert {p.name for p in (tmp_path / "rep").iterdir()} >= {
        "report.md", "f1_by_snr.png", "snr_histogram.png", "a_per_frame.csv"}
    table = markdown_table(pd.DataFrame({"x": [1, 2], "y": [0.5, np.nan]}))
    assert table.splitlines() == ["| x | y |", "|---|---|", "| 1 | 0.500 |", "| 2 | – |"]


def test_cli_evaluate_on_label_tiff_folders(tmp_path, capsys):
    truth, pred = constructed_case()
    for folder, labels in (("truth", truth), ("pred", pred)):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "f_0.tif", labels)
    (tmp_path / "frames").mkdir()
    image = np.random.default_rng(2).normal(100, 5, truth.shape) + 40 * (truth > 0)
    tifffile.imwrite(tmp_path / "frames" / "f_0.tif", image.astype(np.float32))
    code = main(["evaluate", "--truth", str(tmp_path / "truth"), "--pred", str(tmp_path / "pred"),
                 "--frames", str(tmp_path / "frames"), "--out", str(tmp_path / "report")])
    assert code == 0
    out = capsys.readouterr().out
    assert "| F1 | 0.600 |" in out and "[16, inf)" in out
    assert (tmp_path / "report" / "report.md").is_file()


def test_cli_evaluate_binary_masks_and_name_mismatch(tmp_path, capsys):
    truth, pred = constructed_case()
    (tmp_path / "truth").mkdir()
    (tmp_path / "pred").mkdir()
    tifffile.imwrite(tmp_path / "truth" / "a.tif", truth)
    # a binary 0/255 prediction is labelled by 4-connectivity: pred 2 and 3 touch -> one spot
    tifffile.imwrite(tmp_path / "pred" / "a.tif", ((pred > 0) * 255).astype(np.uint8))
    assert main(["evaluate", "--truth", str(tmp_path / "truth"),
                 "--pred", str(tmp_path / "pred")]) == 0
    assert "| predicted spots | 4 |" in capsys.readouterr().out
    assert (tmp_path / "pred" / "evaluation" / "report.md").is_file()
    tifffile.imwrite(tmp_path / "pred" / "b.tif", pred)
    assert main(["evaluate", "--truth", str(tmp_path / "truth"),
                 "--pred", str(tmp_path / "pred")]) == 2
    assert "no ground truth" in capsys.readouterr().err


def test_detection_scores_of_concatenated_tables():
    truth, pred = constructed_case()
    m = match_spots(truth, pred)
    both = detection_scores(pd.concat([m.truth, m.truth]), pd.concat([m.pred, m.pred]))
    assert (both["tp"], both["fp"], both["fn"]) == (6, 4, 4)


def test_cli_segment_tune_evaluate_on_a_simulated_scan(tmp_path, capsys):
    """The simulator's scan folder works as input (beam stop from scan.json) and as truth."""
    pytest.importorskip("labdct_live.simulation.scanfolder")
    import json

    from labdct_live.simulation.microstructure import make_sample
    from labdct_live.simulation.presets import preset
    from labdct_live.simulation.scanfolder import SimulatedScan, write_simulated_scan

    spec, geometry = preset("D35")
    geometry = geometry.with_(detector_shape=(254, 254), pixel_size=geometry.pixel_size * 8,
                              n_projections=11, omega_step=2.0)
    scan_dir = write_simulated_scan(tmp_path / "scan", make_sample(spec, seed=1), geometry,
                                    progress=False)
    args = ["--background", "5", "--sigma", "0.5", "--min-size", "2", "--no-wrap"]
    assert main(["segment", str(scan_dir), str(tmp_path / "seg"), *args]) == 0
    settings = json.loads((tmp_path / "seg" / "segmentation.json").read_text())
    assert settings["beamstop"] == "scan.json"
    beamstop = SimulatedScan.open(scan_dir).geometry.beamstop_mask()
    assert not tifffile.imread(tmp_path / "seg" / "proj_0005.tif")[beamstop].any()
    capsys.readouterr()
    assert main(["evaluate", "--truth", str(scan_dir), "--pred", str(tmp_path / "seg")]) == 0
    out = capsys.readouterr().out
    per_frame = pd.read_csv(tmp_path / "seg" / "evaluation" / "seg_per_frame.csv")
    assert len(per_frame) == 11 and per_frame["name"].iloc[0] == "proj_0000.tif"
    assert per_frame["n_truth"].sum() == len(SimulatedScan.open(scan_dir).spots())
    # noise-free frames, but 8x binned: crowded spots merge; most are still found
    assert per_frame["recall"].mean() > 0.6 and "| F1 |" in out
    assert main(["tune", "--truth", str(scan_dir), "--subset", "3:8:2", "--trials", "4",
                 "--no-wrap", "--out", str(tmp_path / "tuned.json")]) == 0
    tuned = json.loads((tmp_path / "tuned.json").read_text())
    assert tuned["subset"] == [3, 5, 7] and set(tuned["params"]) == {
        "window", "background", "sigma", "percent", "min_size"}
    assert main(["segment", str(scan_dir), str(tmp_path / "seg2"), "--params",
                 str(tmp_path / "tuned.json"), "--no-wrap"]) == 0
    settings = json.loads((tmp_path / "seg2" / "segmentation.json").read_text())
    assert settings["params"] == tuned["params"]
