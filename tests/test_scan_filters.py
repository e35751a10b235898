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
