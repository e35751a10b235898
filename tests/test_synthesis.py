"""Tests of labdct_live.training.synthesis: Eq. 1-2, targets, SNR scaling, normalisation."""

import numpy as np
import pytest

from labdct_live.segmentation.snr import spot_snr
from labdct_live.simulation.geometry import Geometry
from labdct_live.training.synthesis import (
    TARGET_PARAMS,
    SynthesisConfig,
    SynthesisError,
    add_noise,
    compose_clean_input,
    draw_r_bg,
    label_target,
    log_target,
    make_pair,
    make_target,
    normalization_stats,
    normalize_frame,
    predicted_snr,
    random_acquisition,
    scale_for_median_snr,
    spot_signal,
    spot_statistics,
    synthesize_input,
    to_uint8,
)


def _gaussian_spots(shape, centres, amplitude=100.0, sigma=1.5):
    rr, cc = np.mgrid[0:shape[0], 0:shape[1]]
    clean = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.int32)
    for k, (r, c) in enumerate(centres, start=1):
        blob = amplitude * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * sigma**2))
        clean += blob.astype(np.float32)
        labels[blob >= 0.1 * amplitude] = k
    return clean, labels


# ------------------------------------------------------------------------- Eq. 1-2
@pytest.mark.parametrize("x0_value, tau", [(40.0, 1.0), (7.0, 2.0), (110.0, 0.5)])
def test_noise_mean_and_variance_match_eq2(x0_value, tau):
    n = 400_000
    x = add_noise(np.full(n, x0_value, np.float32), tau, rng=1)
    mean, var = (1 + tau / 2) * x0_value, tau**2 * x0_value / 2
    assert x.dtype == np.float32
    assert abs(x.mean() - mean) < 5 * np.sqrt(var / n)
    assert abs(x.var() - var) < 5 * var * np.sqrt(2 / n) + 1e-9 + 0.01 * var
    # Poisson steps of size tau above x0
    steps = (x - x0_value) / tau
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)


def test_zero_tau_is_noise_free():
    x0 = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(add_noise(x0, 0.0, rng=0), x0)


def test_r_bg_range():
    rng = np.random.default_rng(0)
    draws = np.array([draw_r_bg(110.0, rng) for _ in range(20_000)])
    lo, hi = 110 - np.sqrt(110), 110 + np.sqrt(110)
    assert draws.min() >= lo and draws.max() <= hi
    assert draws.min() < lo + 0.01 and draws.max() > hi - 0.01
    assert abs(draws.mean() - 110) < 5 * np.sqrt(110 / 3 / draws.size)  # 5 standard errors


def test_compose_clean_input_and_beamstop_stays_dark():
    spots = np.zeros((20, 20), np.float32)
    spots[5, 5] = 50.0
    background = np.full((20, 20), 0.8, np.float32)
    background[10:, 10:] = 0.1  # the beam stop of the background, spots 0 there
    x0 = compose_clean_input(spots, background, r_bg=100.0, scale=2.0)
    assert x0[5, 5] == pytest.approx(180.0)
    assert x0[15, 15] == pytest.approx(10.0)
    assert x0[0, 0] == pytest.approx(80.0)


def test_synthesize_input_is_deterministic_and_records_r_bg():
    spots, _ = _gaussian_spots((64, 64), [(30, 30)])
    bg = np.full((64, 64), 0.5, np.float32)
    x1, r1 = synthesize_input(spots, bg, rng=4)
    x2, r2 = synthesize_input(spots, bg, rng=4)
    x3, _ = synthesize_input(spots, bg, rng=5)
    np.testing.assert_array_equal(x1, x2)
    assert r1 == r2 and 110 - np.sqrt(110) <= r1 <= 110 + np.sqrt(110)
    assert not np.array_equal(x1, x3)


def test_spot_signal_from_raw_frame():
    frame = np.full((10, 10), 919, np.uint16)
    frame[2, 2] = 1000
    frame[5:, 5:] = 0  # beam stop
    bs = np.zeros((10, 10), bool)
    bs[5:, 5:] = True
    s = spot_signal(frame, 919.0, bs)
    assert s[2, 2] == 81 and s.min() == 0 and s.sum() == 81


# ------------------------------------------------------------------------- targets
def test_log_target_counts_constructed_spots():
    centres = [(20, 20), (20, 60), (60, 40)]
    clean, labels = _gaussian_spots((80, 80), centres)
    target = log_target(clean)
    from scipy import ndimage

    lab, n = ndimage.label(target)
    assert target.dtype == np.uint8 and set(np.unique(target)) == {0, 1}
    assert n == 3 and all(target[r, c] == 1 for r, c in centres)
    # the beam stop is excluded
    exclude = np.zeros((80, 80), bool)
    exclude[50:, :] = True
    assert ndimage.label(log_target(clean, exclude))[1] == 2


def test_log_target_is_scale_invariant():
    clean, _ = _gaussian_spots((60, 60), [(20, 20), (40, 40)])
    np.testing.assert_array_equal(log_target(clean), log_target(0.01 * clean))
    assert TARGET_PARAMS.background == 0


def test_label_target_and_make_target():
    labels = np.zeros((5, 5), np.int32)
    labels[1, 1] = 3
    np.testing.assert_array_equal(label_target(labels), (labels > 0).astype(np.uint8))
    np.testing.assert_array_equal(make_target("labels", labels * 0.0, labels), label_target(labels))
    with pytest.raises(SynthesisError, match="target kind"):
        make_target("mask", labels * 0.0, labels)
    with pytest.raises(SynthesisError, match="labels"):
        make_target("labels", labels * 0.0)


# -------------------------------------------------------------------- SNR scaling
def test_spot_statistics():
    clean = np.zeros((10, 10), np.float32)
    labels = np.zeros((10, 10), np.int32)
    clean[2:4, 2:4] = 10
    labels[2:4, 2:4] = 1
    clean[7, 5:8] = [1, 2, 3]
    labels[7, 5:8] = 4
    st = spot_statistics(clean, labels)
    np.testing.assert_array_equal(st["label"], [1, 4])
    np.testing.assert_allclose(st["mean"], [10, 2])
    np.testing.assert_array_equal(st["n_pixels"], [4, 3])
    np.testing.assert_allclose(st["row"], [2.5, 7])
    np.testing.assert_allclose(st["col"], [2.5, 6])


def test_scale_for_median_snr_hits_target():
    means = np.array([1.0, 5.0, 20.0, 80.0])
    bg = np.array([0.5, 0.7, 0.9, 1.0])
    scale = scale_for_median_snr(3.0, means, bg, r_bg=100.0, tau=1.0)
    assert np.median(predicted_snr(means, bg, 100.0, 1.0, scale)) == pytest.approx(3.0)


@pytest.mark.parametrize("target_snr", [1.0, 4.0])
def test_predicted_snr_matches_measured(target_snr):
    """Flat-topped spots on a flat background: the closed form of Eq. 1-2 and §8 agree."""
    shape = (240, 240)
    clean = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.int32)
    k = 0
    for r in range(30, 220, 60):
        for c in range(30, 220, 60):
            k += 1
            clean[r - 3: r + 4, c - 3: c + 4] = 10.0
            labels[r - 3: r + 4, c - 3: c + 4] = k
    background = np.full(shape, 0.8, np.float32)
    r_bg, tau = 100.0, 1.0
    scale = scale_for_median_snr(target_snr, np.full(k, 10.0), np.full(k, 0.8), r_bg, tau)
    snrs = []
    for seed in range(6):
        x, _ = synthesize_input(clean, background, scale=scale, r_bg=r_bg, tau=tau, rng=seed)
        snrs.append(spot_snr(x, labels)["snr"].to_numpy())
    assert np.mean(snrs) == pytest.approx(target_snr, rel=0.05)


# ------------------------------------------------------------------------ normalising
def test_normalize_frame_uses_percentiles():
    frame = np.tile(np.arange(100, dtype=np.uint16), (50, 1))
    out = normalize_frame(frame)
    p50, p99 = np.percentile(frame, [50, 99])
    np.testing.assert_allclose(out, (frame - p50) / (p99 - p50), rtol=1e-5, atol=1e-5)
    assert out.dtype == np.float32
    assert normalize_frame(np.full((8, 8), 7.0)).max() == 0  # flat frame: spread 1, no NaN


def test_normalization_stats_subsample_close_to_full_frame():
    rng = np.random.default_rng(0)
    frame = rng.poisson(80, (2032, 2032)).astype(np.float32)
    frame[500:1500, 500:1500] *= 0.1
    center, spread = normalization_stats(frame)
    p50, p99 = np.percentile(frame, [50, 99])
    assert center == pytest.approx(p50, rel=0.01)
    assert spread == pytest.approx(p99 - p50, rel=0.03)


def test_to_uint8_clips():
    np.testing.assert_array_equal(to_uint8(np.array([-3.0, 0.4, 110.6, 300.0])), [0, 0, 111, 255])


# ----------------------------------------------------------------------------- pairs
def _frame_with_beamstop():
    shape = (128, 128)
    centres = [(20, 20), (20, 100), (100, 20), (110, 110)]
    clean, labels = _gaussian_spots(shape, centres)
    bs = np.zeros(shape, bool)
    bs[50:80, 50:80] = True
    background = np.full(shape, 0.9, np.float32)
    background[bs] = 0.1
    return clean, labels, background, bs


def test_make_pair_is_deterministic_with_metadata():
    clean, labels, background, bs = _frame_with_beamstop()
    config = SynthesisConfig(i0=50.0, tau=1.5)
    a = make_pair(clean, labels, background, beamstop=bs, config=config, seed=3,
                  meta={"sample": "constructed"})
    b = make_pair(clean, labels, background, beamstop=bs, config=config, seed=3)
    c = make_pair(clean, labels, background, beamstop=bs, config=config, seed=4)
    np.testing.assert_array_equal(a.input, b.input)
    assert not np.array_equal(a.input, c.input)
    for key in ("scale", "median_snr", "r_bg", "i0", "tau", "seed", "target"):
        assert key in a.meta
    assert a.meta["sample"] == "constructed" and a.meta["i0"] == 50.0 and a.meta["tau"] == 1.5
    lo, hi = config.median_snr_range
    assert lo <= a.meta["median_snr"] <= hi
    assert a.target.dtype == np.uint8 and a.target[bs].sum() == 0
    assert a.input_uint8().dtype == np.uint8
    assert set(np.unique(a.target_uint8())) <= {0, 255}
    # the beam stop stays dark: its mean is r_bg * 0.1 * (1 + tau/2)
    expected = a.meta["r_bg"] * 0.1 * (1 + 1.5 / 2)
    assert a.input[bs].mean() == pytest.approx(expected, rel=0.1)


def test_make_pair_label_targets():
    clean, labels, background, bs = _frame_with_beamstop()
    pair = make_pair(clean, labels, background, config=SynthesisConfig(target="labels"), seed=0)
    np.testing.assert_array_equal(pair.target, (labels > 0).astype(np.uint8))


def test_bad_inputs():
    clean, labels, background, bs = _frame_with_beamstop()
    with pytest.raises(SynthesisError, match="shape"):
        make_pair(clean, labels[:-1], background)
    with pytest.raises(SynthesisError, match="NaN"):
        make_pair(np.where(bs, np.nan, clean), labels, background)
    with pytest.raises(SynthesisError, match="negative"):
        compose_clean_input(-clean - 1, background, 10.0)
    with pytest.raises(SynthesisError, match="x0"):
        add_noise(np.array([-1.0]))
    with pytest.raises(SynthesisError, match="i0"):
        SynthesisConfig(i0=0.5)
    with pytest.raises(SynthesisError, match="tau"):
        SynthesisConfig(tau=-1)
    with pytest.raises(SynthesisError, match="median_snr_range"):
        SynthesisConfig(median_snr_range=(3, 1))
    with pytest.raises(SynthesisError, match="target"):
        SynthesisConfig(target="clean")
    with pytest.raises(ValueError, match="2-D"):  # normalization's own check
        normalize_frame(np.ones(5))


# ------------------------------------------------------------------ acquisitions
def test_random_acquisition_ranges_and_determinism():
    seen_materials = set()
    for seed in range(12):
        spec, g = random_acquisition(seed, max_tilt=1.5, max_offset=0.2)
        assert isinstance(g, Geometry)
        assert 11 <= g.lss <= 30 and 11 <= g.lsd <= 30
        assert all(abs(t) <= 1.5 for t in g.tilt) and all(abs(o) <= 0.2 for o in g.offset)
        assert spec.material in ("Al", "Fe") and spec.name.endswith(spec.material)
        seen_materials.add(spec.material)
        r0, r1, c0, c1 = g.beamstop
        side = r1 - r0
        assert 0.3 * 2032 - 2 <= side <= 0.5 * 2032 + 2 and abs((c1 - c0) - side) <= 1
        from labdct_live.simulation.background import beam_center_pixel

        rc, cc = beam_center_pixel(g)
        assert abs((r0 + r1) / 2 - rc) <= 1 and abs((c0 + c1) / 2 - cc) <= 1
    assert seen_materials == {"Al", "Fe"}
    assert random_acquisition(7) == random_acquisition(7)
    spec, _ = random_acquisition(1, samples=("D18",), materials=("Fe",))
    assert spec.material == "Fe" and spec.name == "D18-Fe"
    with pytest.raises(SynthesisError):
        random_acquisition(0, distance_range=(30, 11))
