"""Tests of labdct_live.training.backgrounds and simulation.background (procedural, Appendix A)."""

import numpy as np
import pytest

from labdct_live.simulation.background import (
    ArrayBackground,
    BackgroundError,
    ProceduralBackground,
    background_for_geometry,
    beam_center_pixel,
    procedural_background,
)
from labdct_live.simulation.geometry import Geometry
from labdct_live.training.backgrounds import extract_backgrounds, remove_spots, spot_mask

SHAPE = (400, 420)
BOX = (120, 280, 130, 290)


def _ring(shape, box, inner, outer):
    r0, r1, c0, c1 = box
    m = np.zeros(shape, bool)
    m[max(r0 - outer, 0): r1 + outer + 1, max(c0 - outer, 0): c1 + outer + 1] = True
    m[r0 - inner: r1 + inner + 1, c0 - inner: c1 + inner + 1] = False
    return m


# ------------------------------------------------------------------------ procedural
@pytest.mark.parametrize("seed", range(8))
def test_range_dtype_and_maximum(seed):
    image = procedural_background(SHAPE, BOX, seed)
    assert image.dtype == np.float32 and image.shape == SHAPE
    assert image.min() >= 0
    assert image.max() == 1.0  # normalised by the maximum


@pytest.mark.parametrize("seed", range(8))
def test_beamstop_dark_with_penumbra(seed):
    bg = ProceduralBackground(SHAPE, BOX, seed)
    image = bg.render()
    r0, r1, c0, c1 = BOX
    inner = image[r0 + 5: r1 - 4, c0 + 5: c1 - 4].mean()
    ring = image[_ring(SHAPE, BOX, 40, 60)].mean()
    assert inner < 0.4 * ring
    # the penumbra square around it is less dark than the beam stop, darker than outside it
    pr0, pr1, pc0, pc1 = (int(round(v)) for v in bg._pen_box)
    assert pr0 < r0 and pr1 > r1 and pc0 < c0 and pc1 > c1
    penumbra = np.zeros(SHAPE, bool)
    penumbra[pr0: pr1 + 1, pc0: pc1 + 1] = True
    penumbra[r0 - 1: r1 + 2, c0 - 1: c1 + 2] = False
    outside = _ring(SHAPE, (pr0, pr1, pc0, pc1), 5, 15)
    assert inner < image[penumbra].mean() < image[outside].mean()


def test_horizontal_line_through_beam_centre():
    bg = ProceduralBackground(SHAPE, BOX, seed=3)
    image = bg.render()
    line = int(round(bg._line_row))
    cols = np.r_[0:60, 360:420]  # away from the beam stop
    bump = image[line, cols] - 0.5 * (image[line - 8, cols] + image[line + 8, cols])
    assert bump.mean() > 0.005


def test_reproducible_and_seeds_differ():
    a = procedural_background(SHAPE, BOX, 5)
    b = procedural_background(SHAPE, BOX, 5)
    c = procedural_background(SHAPE, BOX, 6)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.01


def test_window_render_equals_full_frame():
    bg = ProceduralBackground((300, 333), (100, 200, 90, 210), seed=2)
    full = bg.render()
    np.testing.assert_array_equal(bg.render(slice(37, 101), slice(150, 290)), full[37:101, 150:290])
    rows, cols = np.array([0, 5, 99, 299]), np.array([3, 150, 332])
    np.testing.assert_array_equal(bg.render(rows, cols), full[np.ix_(rows, cols)])
    np.testing.assert_array_equal(bg(), full)


def test_no_beamstop_and_any_shape():
    image = procedural_background((64, 97), (0, -1, 0, -1), seed=1)
    assert image.shape == (64, 97) and image.max() == 1.0 and image.min() >= 0


def test_streaks_only_outside_the_dark_square():
    bg = ProceduralBackground(SHAPE, BOX, seed=4)
    with_streaks = bg.render()
    bg._streak_amp[:] = 0
    without = bg.render()
    diff = with_streaks - without
    r0, r1, c0, c1 = BOX
    assert np.all(diff[r0:r1 + 1, c0:c1 + 1] == 0)
    assert diff[_ring(SHAPE, BOX, 1, 15)].max() > 0.01


def test_background_for_geometry_follows_beamstop_and_beam():
    g = Geometry(detector_shape=(256, 300), pixel_size=0.02, lsd=11.0)
    bg = background_for_geometry(g, seed=0)
    assert bg.shape == (256, 300)
    assert bg.beamstop == g.beamstop
    assert bg.center == pytest.approx(beam_center_pixel(g))
    assert beam_center_pixel(g) == pytest.approx(g.center)  # untilted, no offset


@pytest.mark.parametrize("shape, box", [((4, 400), None), ((100, 100), (200, 300, 0, 10)),
                                        ((100, 100), (1, 2, 3))])
def test_bad_procedural_input(shape, box):
    with pytest.raises(BackgroundError):
        ProceduralBackground(shape, box, seed=0)


def test_bad_render_index():
    bg = ProceduralBackground((50, 50), None, seed=0)
    with pytest.raises(BackgroundError, match="rows"):
        bg.render(np.array([0, 50]), None)


def test_array_background():
    image = np.linspace(0, 1, 20 * 30, dtype=np.float32).reshape(20, 30)
    bg = ArrayBackground(image)
    np.testing.assert_array_equal(bg.render(slice(2, 5), slice(0, 30, 3)), image[2:5, ::3])
    np.testing.assert_array_equal(bg.render(np.array([1, 4]), np.array([0, 29])),
                                  image[np.ix_([1, 4], [0, 29])])
    with pytest.raises(BackgroundError):
        ArrayBackground(image * 2)


# ------------------------------------------------------------------------- extractor
def _spotty_frame(rng, background, n_spots=12, amplitude=400.0, noise=5.0):
    """A frame with n well-separated Gaussian spots on a grid; returns (frame, centres)."""
    rows, cols = background.shape
    frame = background + rng.normal(0, noise, background.shape)
    rr, cc = np.mgrid[0:rows, 0:cols]
    centres = []
    grid_r = np.linspace(40, rows - 40, 3).astype(int)
    grid_c = np.linspace(40, cols - 40, n_spots // 3).astype(int)
    for r in grid_r:
        for c in grid_c:
            frame += amplitude * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * 2.0**2))
            centres.append((r, c))
    return frame.astype(np.float32), centres


def _smooth_background(shape, dark_box=None):
    rows, cols = shape
    rr, cc = np.mgrid[0:rows, 0:cols]
    bg = 600 + 150 * np.exp(-((rr - rows / 2) ** 2 + (cc - cols / 2) ** 2) / (2 * 120.0**2))
    if dark_box is not None:
        r0, r1, c0, c1 = dark_box
        bg[r0:r1, c0:c1] = 80.0
    return bg


def test_spot_mask_finds_each_spot_and_not_the_dark_square():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    bg = _smooth_background((256, 320), dark_box=(70, 100, 60, 100))  # 20 px from spots
    frame, centres = _spotty_frame(rng, bg)
    mask = spot_mask(frame)
    labels, n = ndimage.label(mask)
    assert n == len(centres)
    assert all(labels[r, c] > 0 for r, c in centres)
    assert not mask[65:106, 55:106].any()  # the square's edges are not spots


def test_remove_spots_fills_from_surroundings():
    rng = np.random.default_rng(1)
    bg = _smooth_background((256, 320))
    frame, centres = _spotty_frame(rng, bg)
    filled, fill_mask = remove_spots(frame)
    for r, c in centres:
        assert fill_mask[r, c]
        assert abs(filled[r, c] - bg[r, c]) < 15  # 400-count spots are gone
    # the disk dilation: 13 px from a spot centre is still filled, 25 px is not
    r, c = centres[4]
    assert fill_mask[r, c + 13] and not fill_mask[r, c + 25]
    np.testing.assert_array_equal(filled[~fill_mask], frame[~fill_mask])


def test_extract_backgrounds_removes_static_spots():
    rng = np.random.default_rng(2)
    bg = _smooth_background((200, 240))
    # the same spots in every frame: a plain median would keep them
    stack = np.stack([_spotty_frame(rng, bg)[0] for _ in range(9)])
    centres = _spotty_frame(rng, bg)[1]
    out = extract_backgrounds(stack, window=9, progress=False)
    assert out.shape == (1, 200, 240) and out.dtype == np.float32
    assert out.max() == pytest.approx(1.0)
    expected = bg / bg.max()
    for r, c in centres:
        assert abs(out[0, r, c] - expected[r, c]) < 0.02
    r, c = centres[0]
    assert np.median(stack[:, r, c]) - bg[r, c] > 300  # a plain median keeps the spots


def test_extract_backgrounds_windows_and_stride():
    rng = np.random.default_rng(3)
    stack = [np.full((64, 64), 100.0) + rng.normal(0, 1, (64, 64)) for _ in range(7)]
    out = extract_backgrounds(stack, window=3, stride=2, progress=False)
    assert out.shape == (3, 64, 64)


def test_extractor_errors():
    stack = np.ones((5, 32, 32))
    with pytest.raises(BackgroundError, match="window"):
        extract_backgrounds(stack, window=6, progress=False)
    bad = stack.copy()
    bad[2, 3, 3] = np.nan
    with pytest.raises(BackgroundError, match="NaN"):
        extract_backgrounds(bad, window=5, progress=False)
    with pytest.raises(BackgroundError, match="shape"):
        extract_backgrounds([np.ones((32, 32)), np.ones((32, 30))], window=2, progress=False)
    with pytest.raises(BackgroundError, match="2-D"):
        remove_spots(np.ones((3, 32, 32)))
    with pytest.raises(BackgroundError, match="mask shape"):
        remove_spots(np.ones((32, 32)), mask=np.zeros((30, 30), bool))
