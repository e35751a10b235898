"""Spot SNR (docs/physics.md §8), frame summaries and exposure planning (segmentation.snr)."""

from __future__ import annotations

import numpy as np
import pytest

from labdct_live.segmentation.snr import exposure_for_snr, snr_summary, spot_snr


def checkerboard(shape, low, high):
    rows, cols = np.indices(shape)
    return np.where((rows + cols) % 2 == 0, low, high).astype(float)


def constructed_frame():
    """Background B ± d and a 6x6 spot S ± e on checkerboards (population SDs d and e), a
    neighbouring bright spot inside the margin, and an excluded hot region in the margin."""
    B, d, S, e = 500.0, 7.0, 560.0, 3.0
    image = checkerboard((120, 120), B - d, B + d)
    labels = np.zeros((120, 120), np.int32)
    labels[50:56, 50:56] = 1
    image[50:56, 50:56] = checkerboard((6, 6), S - e, S + e)
    labels[40:44, 62:66] = 2  # another spot within 20 px: must be masked out
    image[40:44, 62:66] = 10_000
    exclude = np.zeros((120, 120), bool)
    exclude[60:64, 36:40] = True  # e.g. the beam stop: must be ignored
    image[exclude] = 0
    return image, labels, exclude, (B, d, S, e)


def test_snr_equals_the_closed_form():
    image, labels, exclude, (B, d, S, e) = constructed_frame()
    table = spot_snr(image, labels, margin=20, exclude=exclude).set_index("label")
    spot = table.loc[1]
    assert spot["n_pixels"] == 36
    assert spot["mean_spot"] == pytest.approx(S) and spot["sd_spot"] == pytest.approx(e)
    assert spot["mean_background"] == pytest.approx(B, abs=1e-9)
    assert spot["sd_background"] == pytest.approx(d)
    # window rows 30..75, cols 30..75 (46 x 46) minus the 36 + 16 spot pixels and 16 excluded
    assert spot["n_background"] == 46 * 46 - 36 - 16 - 16
    assert spot["snr"] == pytest.approx((S - B) / d)
    assert spot["snr_combined"] == pytest.approx((S - B) / np.hypot(d, e))
    assert bool(spot["visible"])


def test_margin_is_clipped_at_the_frame_edge():
    B, d = 100.0, 2.0
    image = checkerboard((40, 40), B - d, B + d)
    labels = np.zeros((40, 40), np.int32)
    labels[0:2, 0:2] = 7
    image[0:2, 0:2] = 103.0
    spot = spot_snr(image, labels, margin=5).iloc[0]
    assert spot["label"] == 7
    assert spot["n_background"] == 7 * 7 - 4
    assert spot["sd_background"] == pytest.approx(d, rel=1e-3)  # 45 px: not exactly balanced
    assert spot["snr"] == pytest.approx((103 - spot["mean_background"]) / spot["sd_background"])


def test_visibility_threshold_is_one_and_a_half_background_sds():
    B, d = 200.0, 10.0
    image = checkerboard((60, 60), B - d, B + d)
    labels = np.zeros((60, 60), np.int32)
    labels[10:14, 10:14] = 1
    labels[40:44, 40:44] = 2
    image[10:14, 10:14] = B + 1.4 * d
    image[40:44, 40:44] = B + 1.6 * d
    table = spot_snr(image, labels).set_index("label")
    assert table.loc[1, "snr"] == pytest.approx(1.4)
    assert not table.loc[1, "visible"] and table.loc[2, "visible"]


def test_vectorised_snr_equals_a_per_spot_loop():
    rng = np.random.default_rng(5)
    image = rng.normal(300, 20, (150, 170))
    labels = np.zeros(image.shape, np.int32)
    for k in range(1, 40):
        r, c = rng.integers(0, 146), rng.integers(0, 166)
        labels[r:r + rng.integers(1, 5), c:c + rng.integers(1, 5)] = k * 3  # sparse labels
        image[labels == k * 3] += rng.uniform(0, 200)
    exclude = np.zeros(image.shape, bool)
    exclude[60:90, 70:100] = True
    margin = 8
    table = spot_snr(image, labels, margin, exclude).set_index("label")
    background = (labels == 0) & ~exclude
    for k in np.unique(labels[labels > 0]):
        rows, cols = np.nonzero(labels == k)
        window = np.zeros(image.shape, bool)
        window[max(rows.min() - margin, 0):rows.max() + margin + 1,
               max(cols.min() - margin, 0):cols.max() + margin + 1] = True
        bg = image[window & background]
        spot = image[labels == k]
        expected = (spot.mean() - bg.mean()) / bg.std()
        assert table.loc[k, "snr"] == pytest.approx(expected, rel=1e-9)
        assert table.loc[k, "n_background"] == bg.size


def test_noise_free_background_gives_infinite_snr_and_no_background_gives_nan():
    image = np.full((30, 30), 50.0)
    labels = np.zeros((30, 30), np.int32)
    labels[10:12, 10:12] = 1
    image[10:12, 10:12] = 80
    assert spot_snr(image, labels)["snr"].iloc[0] == np.inf
    full = np.ones((5, 5), np.int32)
    assert np.isnan(spot_snr(np.ones((5, 5)), full)["snr"].iloc[0])


def test_no_spots_gives_an_empty_table():
    table = spot_snr(np.ones((8, 8)), np.zeros((8, 8), np.int32))
    assert len(table) == 0 and "snr" in table.columns


def test_snr_input_errors():
    with pytest.raises(ValueError, match="same shape"):
        spot_snr(np.ones((4, 4)), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="integer"):
        spot_snr(np.ones((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="margin"):
        spot_snr(np.ones((4, 4)), np.zeros((4, 4), int), margin=0)


def test_frame_summary():
    snr = np.array([0.5, 1.0, 1.5, 3.0, 4.0, np.inf])
    s = snr_summary(snr, low=2.0, percentiles=(50,))
    finite = snr[:5]
    assert s["n_spots"] == 6 and s["n_below"] == 3 and s["fraction_below"] == 0.5
    assert s["mean"] == pytest.approx(finite.mean()) and s["sd"] == pytest.approx(finite.std())
    assert s["p50"] == 1.5
    empty = snr_summary(np.array([]))
    assert empty["n_spots"] == 0 and np.isnan(empty["mean"])


def test_frame_summary_of_a_table_counts_visible_spots():
    image, labels, exclude, _ = constructed_frame()
    s = snr_summary(spot_snr(image, labels, exclude=exclude))
    assert s["n_spots"] == 2 and s["n_visible"] == 2


def test_exposure_for_snr():
    assert exposure_for_snr(10.0, 1.0, 2.0) == pytest.approx(40.0)
    assert exposure_for_snr(8.0, 4.0, 2.0) == pytest.approx(2.0)
    # consistent with Poisson statistics: SNR of a constant signal over Poisson background
    rng = np.random.default_rng(0)
    signal, bg = 5.0, 100.0  # counts per unit time
    snr_at = {t: (signal * t) / np.std(rng.poisson(bg * t, 200_000)) for t in (1.0, 4.0)}
    assert exposure_for_snr(1.0, snr_at[1.0], snr_at[4.0]) == pytest.approx(4.0, rel=0.02)
    for bad in (dict(current_exposure=0), dict(current_snr=-1), dict(target_snr=np.nan)):
        args = dict(current_exposure=1.0, current_snr=1.0, target_snr=2.0) | bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            exposure_for_snr(**args)
