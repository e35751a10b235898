"""What a scan offers a segmentation: static background, zingers, faint spots, full extent."""

from __future__ import annotations

import numpy as np
import pytest

from labdct_live.segmentation.scan_filters import (
    StaticBackground,
    drop_faint,
    grow_spots,
    reject_zingers,
    subtract_static,
)


def _spot(shape=(40, 40), center=(20, 20), sigma=1.5, peak=500.0):
    r, c = np.mgrid[:shape[0], :shape[1]]
    return peak * np.exp(-((r - center[0]) ** 2 + (c - center[1]) ** 2) / (2 * sigma ** 2))


def test_a_zinger_goes_and_a_spot_stays():
    frame = 100 + _spot()
    frame[5, 30] += 3000  # one pixel, sharper than the point spread
    cleaned, count = reject_zingers(frame, threshold=200)
    assert count == 1
    assert cleaned[5, 30] == pytest.approx(100, abs=1)
    np.testing.assert_allclose(cleaned[15:26, 15:26], frame[15:26, 15:26])


def test_static_background_subtracts_what_does_not_move():
    rng = np.random.default_rng(0)
    static = rng.uniform(100, 200, (30, 30)).astype(np.float32)
    bg = StaticBackground(window=6, min_frames=3)
    frames = []
    for k in range(8):
        f = static + rng.normal(0, 1, static.shape).astype(np.float32)
        f[3 + 3 * k, 10] += 400  # a spot that moves
        frames.append(f)
    outputs = [bg(f) for f in frames]
    last = outputs[-1]
    assert abs(float(np.median(last))) < 1.0
    assert last[3 + 3 * 7, 10] > 350  # the moving spot is kept
    fixed = StaticBackground(static, window=0)
    np.testing.assert_allclose(fixed(frames[0]), subtract_static(frames[0], static))
    with pytest.raises(ValueError, match="differ in shape"):
        subtract_static(frames[0], static[:10])


def test_faint_spots_are_dropped_and_spots_grow_to_their_extent():
    image = _spot(peak=500.0) + _spot(center=(8, 8), peak=50.0)
    mask = (image > 25).astype(np.uint8)
    kept = drop_faint(mask, image, 100.0)
    assert kept[20, 20] == 1 and kept[8, 8] == 0
    core = (image > 400).astype(np.uint8)
    grown = grow_spots(core, image, 25.0)
    assert grown.sum() > 3 * core.sum()
    assert grown[8, 8] == 0  # grows only from a spot, never creates one


def test_static_mask_watch_tells_a_streak_from_moving_spots():
    from labdct_live.segmentation.scan_filters import StaticMaskWatch

    rng = np.random.default_rng(0)
    watch, moving = StaticMaskWatch(window=6, min_frames=3), StaticMaskWatch(window=6,
                                                                             min_frames=3)
    streak = np.zeros((64, 64), bool)
    streak[30, 5:45] = True  # 40 px that never move
    with_streak, spots_only = [], []
    for _ in range(12):
        spots = np.zeros((64, 64), bool)
        for r, c in rng.integers(2, 60, (6, 2)):  # 6 spots of 9 px, somewhere new each frame
            spots[r - 1:r + 2, c - 1:c + 2] = True
        with_streak.append(watch(streak | spots))
        spots_only.append(moving(spots))
    assert all(np.isnan(with_streak[:3])) and all(np.isnan(spots_only[:3]))
    assert np.nanmin(with_streak[3:]) > 0.35  # ~40 of ~94 pixels
    assert np.nanmax(spots_only[3:]) < 0.1
    assert np.isnan(watch(np.zeros((64, 64), bool)))  # an empty mask has no share
    assert np.isnan(watch(np.ones((32, 32), bool)))  # a new detector shape starts afresh
    with pytest.raises(ValueError):
        StaticMaskWatch(window=3, min_frames=5)


def test_the_dl_method_warns_when_its_masks_stop_moving(caplog):
    from labdct_live.methods import DLMethod

    rng = np.random.default_rng(1)
    method = DLMethod(None, threshold=0.3)
    method.static_watch.min_frames = 3
    base = 500 + 300 * _spot((128, 128), (64, 64), sigma=40, peak=1.0)
    streak = np.zeros((128, 128))
    streak[40, 10:110] = 3000  # bright, static, spot-like to the network
    caplog.set_level("WARNING", logger="labdct_live.methods")
    shares = []
    for k in range(8):
        frame = base + streak + _spot((128, 128), tuple(rng.integers(20, 108, 2)), peak=4000)
        frame = rng.poisson(frame).astype(np.uint16)
        result = method.push(k, frame)[0]
        shares.append(result.extra["static_share"])
        assert "out_of_domain" in result.extra
    assert np.nanmax(shares[3:]) >= 0.2
    warnings = [r for r in caplog.records if "segmented in nearly all" in r.getMessage()]
    assert len(warnings) == 1  # once, not once per frame
