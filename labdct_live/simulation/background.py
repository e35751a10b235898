"""Procedural detector backgrounds: smooth, radially structured, with a beam-stop shadow; what a
simulated frame sits on when no experimental background is given.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "BackgroundError",
    "ProceduralBackground",
    "ArrayBackground",
    "procedural_background",
    "background_for_geometry",
    "beam_center_pixel",
]


_GRID = 48  # control points per axis of the smooth part (features span hundreds of pixels)

_ANGLE_BINS = 8192  # resolution of the streak table: ~0.5 px at 700 px from the beam


class BackgroundError(ValueError):
    """Invalid input to a background generator or extractor; the message names the parameter."""


def _keys_weights(n_out: int, n_grid: int, positions: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Cubic-convolution (Keys, a = -0.5) taps for a grid spanning ``[0, n_out - 1]``.

    Returns ``(index, weight)``, each ``(len(positions), 4)``: the grid value at pixel
    position ``p`` is ``sum_k weight[p, k] * grid[index[p, k]]`` (edge values repeated).
    """
    t = positions.astype(np.float64) * (n_grid - 1) / max(n_out - 1, 1)
    base = np.floor(t).astype(int)
    x = np.abs((t - base)[:, None] - np.arange(-1, 3)[None, :])
    weight = np.where(
        x <= 1, 1.5 * x**3 - 2.5 * x**2 + 1,
        np.where(x < 2, -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2, 0.0),
    ).astype(np.float32)
    index = np.clip(base[:, None] + np.arange(-1, 3)[None, :], 0, n_grid - 1)
    return index, weight


def _interpolate_grid(grid: np.ndarray, row_taps, col_taps) -> np.ndarray:
    """Separable 4-tap interpolation of a coarse grid (gathers, no BLAS: small matrix products
    stall when BLAS threads compete with training threads)."""
    r_idx, r_w = row_taps
    c_idx, c_w = col_taps
    along_cols = sum(grid[:, c_idx[:, k]] * c_w[None, :, k] for k in range(4))  # (n_grid, w)
    out = along_cols[r_idx[:, 0]] * r_w[:, 0, None]  # whole-row gathers: memory-friendly
    for k in range(1, 4):
        out += along_cols[r_idx[:, k]] * r_w[:, k, None]
    return out


def _soft_step(x: np.ndarray, width: float) -> np.ndarray:
    """Logistic step from 0 (x << 0) to 1 (x >> 0) over about ``width`` pixels."""
    return 0.5 * (1.0 + np.tanh(x / max(width, 1e-6)))


def _soft_interval(x: np.ndarray, lo: float, hi: float, width: float) -> np.ndarray:
    """1 inside ``[lo, hi]``, 0 outside, with soft edges of about ``width`` pixels."""
    return _soft_step(x - lo + 0.5, width) * _soft_step(hi + 0.5 - x, width)


def _axis_index(index: slice | np.ndarray | Sequence[int] | None, n: int, name: str) -> np.ndarray:
    if index is None:
        return np.arange(n)
    if isinstance(index, slice):
        return np.arange(n)[index]
    out = np.asarray(index)
    if out.ndim != 1 or not np.issubdtype(out.dtype, np.integer):
        raise BackgroundError(f"{name} must be a slice or a 1-D array of integer pixel indices")
    if out.size and (out.min() < 0 or out.max() >= n):
        raise BackgroundError(f"{name} indices must lie in [0, {n - 1}]")
    return out


def _box_distance(rows: np.ndarray, cols: np.ndarray, box: tuple[int, int, int, int]):
    """Euclidean distance (px) of pixels to a box (0 inside), shape (len(rows), len(cols))."""
    r0, r1, c0, c1 = box
    dr = np.maximum(np.maximum(r0 - rows, rows - r1), 0).astype(np.float32)
    dc = np.maximum(np.maximum(c0 - cols, cols - c1), 0).astype(np.float32)
    return np.sqrt(dr[:, None] ** 2 + dc[None, :] ** 2)


def _check_shape(shape) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise BackgroundError(f"shape must be (rows, cols), got {shape!r}") from None
    if rows < 8 or cols < 8:
        raise BackgroundError(f"shape must be at least 8 x 8 pixels, got {shape!r}")
    return rows, cols


def _check_beamstop(beamstop, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    if beamstop is None:
        return None
    try:
        r0, r1, c0, c1 = (int(v) for v in beamstop)
    except (TypeError, ValueError):
        raise BackgroundError(
            f"beamstop must be (row0, row1, col0, col1) or None, got {beamstop!r}"
        ) from None
    if r1 < r0 or c1 < c0:  # Geometry's "no beam stop" convention, e.g. (0, -1, 0, -1)
        return None
    rows, cols = shape
    if r1 < 0 or c1 < 0 or r0 >= rows or c0 >= cols:
        raise BackgroundError(f"beamstop {beamstop!r} lies outside the {rows}x{cols} frame")
    return r0, r1, c0, c1


class ProceduralBackground:
    """A random LabDCT-like background, reproducible from its seed (docs/physics.md §6b).

    All feature strengths, sizes and positions are drawn from ``seed`` when the object is
    made; :meth:`render` then evaluates any rows and columns of the frame. The image is
    normalised by its maximum on a grid of every 8th pixel (the rare brighter pixels between
    grid points are clipped at 1, so the full frame's maximum is exactly 1): values lie in
    ``[0, 1]``.

    Parameters
    ----------
    shape : (int, int)
        Frame size ``(rows, cols)``.
    beamstop : (int, int, int, int) or None
        Beam-stop shadow ``(row0, row1, col0, col1)``, inclusive, as
        :attr:`labdct_live.simulation.geometry.Geometry.beamstop`; None (or an empty box) for none.
    seed : int, numpy.random.Generator or None
        Source of randomness.
    center : (float, float) or None
        Where the direct beam meets the detector ``(row, col)``; the beam stop's centre (or
        the frame's centre without a beam stop) when None.

    Examples
    --------
    >>> bg = ProceduralBackground((512, 512), beamstop=(150, 360, 150, 360), seed=1)
    >>> image = bg.render()
    >>> image.shape, float(image.max())
    ((512, 512), 1.0)
    >>> crop = bg.render(slice(0, 64), slice(100, 164))
    >>> bool(np.array_equal(crop, image[0:64, 100:164]))
    True
    """

    def __init__(
        self,
        shape: tuple[int, int],
        beamstop: tuple[int, int, int, int] | None = None,
        seed: int | np.random.Generator | None = None,
        *,
        center: tuple[float, float] | None = None,
    ) -> None:
        self.shape = _check_shape(shape)
        self.beamstop = _check_beamstop(beamstop, self.shape)
        rng = np.random.default_rng(seed)
        rows, cols = self.shape
        if center is None:
            if self.beamstop is None:
                center = ((rows - 1) / 2, (cols - 1) / 2)
            else:
                r0, r1, c0, c1 = self.beamstop
                center = ((r0 + r1) / 2, (c0 + c1) / 2)
        self.center = (float(center[0]), float(center[1]))
        self._draw(rng)
        self._scale = 1.0
        stride = 8  # the full frame's max is >= this grid's, so the frame reaches exactly 1
        grid_max = float(self.render(slice(None, None, stride), slice(None, None, stride),
                                     _normalise=False).max())
        self._scale = 1.0 / grid_max if grid_max > 0 else 1.0

    # The parameter ranges below are "random strengths" of the features seen in real frames;
    # sizes are fractions of the frame so any detector size looks alike.
    def _draw(self, rng: np.random.Generator) -> None:
        rows, cols = self.shape
        size = float(min(rows, cols))
        rc, cc = self.center
        # Smooth part on a coarse grid: an elliptical bright centre, a linear tilt and
        # low-frequency detector structure.
        u = np.linspace(0.0, rows - 1, _GRID)[:, None]
        v = np.linspace(0.0, cols - 1, _GRID)[None, :]
        peak_r = rc + rng.normal(0, 0.08) * rows
        peak_c = cc + rng.normal(0, 0.08) * cols
        angle = rng.uniform(0, np.pi)
        du, dv = (u - peak_r) / size, (v - peak_c) / size
        a = du * np.cos(angle) + dv * np.sin(angle)
        b = -du * np.sin(angle) + dv * np.cos(angle)
        radius = np.hypot(a / rng.uniform(0.45, 0.9), b / rng.uniform(0.45, 0.9))
        falloff = rng.uniform(0.25, 0.7)  # how much darker the corners are than the centre
        smooth = (1 - falloff) + falloff * np.exp(-radius ** rng.uniform(1.5, 2.5))
        tilt_dir = rng.uniform(0, 2 * np.pi)
        smooth = smooth + rng.uniform(0, 0.2) * (np.cos(tilt_dir) * (u - rows / 2) / rows
                                                 + np.sin(tilt_dir) * (v - cols / 2) / cols)
        structure = ndimage.gaussian_filter(rng.normal(size=(_GRID, _GRID)), rng.uniform(1.5, 4))
        structure /= max(np.abs(structure).max(), 1e-12)
        smooth = smooth + rng.uniform(0.01, 0.06) * structure
        self._grid = smooth.astype(np.float32)

        # Faint row/column banding of the detector's read-out (mid-frequency, separable).
        def banding(n: int) -> np.ndarray:
            p = ndimage.gaussian_filter1d(rng.normal(size=n), rng.uniform(4, 30), mode="wrap")
            return (p / max(np.abs(p).max(), 1e-12)).astype(np.float32)

        self._row_band = banding(rows) * rng.uniform(0.0, 0.015)
        self._col_band = banding(cols) * rng.uniform(0.0, 0.015)

        # Diffuse glow at one edge: exponential along the normal, Gaussian along the edge.
        self._glow_edge = int(rng.integers(4))  # 0 top, 1 bottom, 2 left, 3 right
        self._glow_amp = rng.uniform(0.1, 0.5)
        self._glow_decay = rng.uniform(0.03, 0.15) * size
        along = cols if self._glow_edge < 2 else rows
        self._glow_center = rng.uniform(0.2, 0.8) * along
        self._glow_width = rng.uniform(0.15, 0.5) * along

        # A faint horizontal line through the beam centre.
        self._line_row = rc + rng.normal(0, 2.0)
        self._line_sigma = rng.uniform(0.7, 2.5)
        self._line_amp = rng.uniform(0.01, 0.06)

        # Sample shadow: a vertical band of lower intensity through the beam centre
        # (the cylinder of the sample standing on the rotation axis).
        half = rng.uniform(0.04, 0.2) * cols
        shift = rng.normal(0, 0.02) * cols
        self._shadow_cols = (cc + shift - half, cc + shift + half)
        self._shadow_edge = rng.uniform(5, 40) * size / 2032
        self._shadow_depth = rng.uniform(0.03, 0.25)
        if rng.random() < 0.5:  # the sample's top or bottom may lie inside the frame
            self._shadow_rows = (rc - rng.uniform(0.3, 0.6) * rows,
                                 rc + rng.uniform(0.3, 0.6) * rows)
        else:
            self._shadow_rows = (-np.inf, np.inf)

        if self.beamstop is None:
            return
        r0, r1, c0, c1 = self.beamstop
        bs_size = float(min(r1 - r0 + 1, c1 - c0 + 1))
        self._bs_level = rng.uniform(0.03, 0.25)  # inner shadow relative to its surroundings
        self._bs_edge = rng.uniform(0.7, 3.0)
        # Penumbra: a larger, less dark square; asymmetric margins.
        margins = rng.uniform(0.01, 0.06, size=4) * bs_size + 3
        self._pen_box = (r0 - margins[0], r1 + margins[1], c0 - margins[2], c1 + margins[3])
        self._pen_level = rng.uniform(0.35, 0.7)
        self._pen_edge = rng.uniform(2.0, 15.0)
        # Brighter halo just outside the penumbra.
        self._halo_amp = rng.uniform(0.0, 0.15)
        self._halo_decay = rng.uniform(0.02, 0.12) * bs_size + 5
        # Ring of short radial streaks starting at the beam-stop edge: an angular table of
        # amplitude and length, looked up per pixel.
        n_streaks = int(rng.integers(20, 90))
        phi = np.linspace(-np.pi, np.pi, _ANGLE_BINS, endpoint=False)
        amp = np.zeros(_ANGLE_BINS)
        length = np.full(_ANGLE_BINS, 1.0)
        ring_radius = bs_size / 2
        bin_width = 2 * np.pi / _ANGLE_BINS
        for _ in range(n_streaks):
            center_phi = rng.uniform(-np.pi, np.pi)
            width = rng.uniform(0.6, 2.5) / ring_radius  # a few pixels across
            d = np.angle(np.exp(1j * (phi - center_phi)))
            near = np.abs(d) < 4 * width + bin_width
            profile = np.exp(-0.5 * (d[near] / width) ** 2)
            amp[near] += rng.uniform(0.03, 0.3) * profile
            streak_length = rng.uniform(0.01, 0.05) * bs_size + 4
            length[near] = np.where(profile > 0.1, streak_length, length[near])
        self._streak_amp = (amp * rng.uniform(0.3, 1.0)).astype(np.float32)
        self._streak_len = length.astype(np.float32)
        self._streak_reach = float(4 * length.max())

    def render(
        self,
        rows: slice | np.ndarray | None = None,
        cols: slice | np.ndarray | None = None,
        *,
        _normalise: bool = True,
    ) -> np.ndarray:
        """Evaluate the background at the given rows and columns.

        Parameters
        ----------
        rows, cols : slice, 1-D int array or None
            Pixel rows and columns to render (all when None); sorted index arrays.

        Returns
        -------
        ndarray of float32
            ``(len(rows), len(cols))`` image in ``[0, 1]``, equal to the same pixels of the
            full rendered frame.
        """
        n_rows, n_cols = self.shape
        r = _axis_index(rows, n_rows, "rows")
        c = _axis_index(cols, n_cols, "cols")
        image = _interpolate_grid(self._grid, _keys_weights(n_rows, _GRID, r),
                                  _keys_weights(n_cols, _GRID, c))
        image += self._row_band[r][:, None]
        image += self._col_band[c][None, :]

        rf = r.astype(np.float32)
        cf = c.astype(np.float32)
        if self._glow_edge < 2:
            dist = rf if self._glow_edge == 0 else (n_rows - 1) - rf
            along_pos = cf
        else:
            dist = cf if self._glow_edge == 2 else (n_cols - 1) - cf
            along_pos = rf
        normal = self._glow_amp * np.exp(-dist / self._glow_decay)
        lateral = np.exp(-0.5 * ((along_pos - self._glow_center) / self._glow_width) ** 2)
        if self._glow_edge < 2:
            image += np.outer(normal, lateral).astype(np.float32)
        else:
            image += np.outer(lateral, normal).astype(np.float32)

        band = _soft_interval(cf, *self._shadow_cols, self._shadow_edge)
        band_rows = (
            np.ones_like(rf) if np.isinf(self._shadow_rows[0])
            else _soft_interval(rf, *self._shadow_rows, 10 * self._shadow_edge)
        )
        image *= 1 - self._shadow_depth * np.outer(band_rows, band).astype(np.float32)

        line = self._line_amp * np.exp(-0.5 * ((rf - self._line_row) / self._line_sigma) ** 2)
        image += line[:, None]

        if self.beamstop is not None:
            self._apply_beamstop(image, r, c)
        np.maximum(image, 0, out=image)
        if _normalise:
            image *= self._scale
            np.minimum(image, 1, out=image)
        return image

    def _apply_beamstop(self, image: np.ndarray, r: np.ndarray, c: np.ndarray) -> None:
        r0, r1, c0, c1 = self.beamstop
        rf, cf = r.astype(np.float32), c.astype(np.float32)
        pr0, pr1, pc0, pc1 = self._pen_box
        halo_dist = _box_distance(r, c, tuple(int(round(v)) for v in self._pen_box))
        image += self._halo_amp * np.exp(-halo_dist / self._halo_decay)
        penumbra = np.outer(_soft_interval(rf, pr0, pr1, self._pen_edge),
                            _soft_interval(cf, pc0, pc1, self._pen_edge))
        image *= 1 - (1 - self._pen_level) * penumbra
        inner = np.outer(_soft_interval(rf, r0, r1, self._bs_edge),
                         _soft_interval(cf, c0, c1, self._bs_edge))
        image *= 1 - (1 - self._bs_level / self._pen_level) * inner

        # Streaks: evaluated only in the four strips around the dark square that are within
        # reach of its edge (inside it they are zero).
        reach = self._streak_reach
        near_r = (r >= r0 - reach) & (r <= r1 + reach)
        near_c = (c >= c0 - reach) & (c <= c1 + reach)
        inside_r = (r >= r0) & (r <= r1)
        strips = (
            (near_r & (r < r0), near_c),
            (near_r & (r > r1), near_c),
            (inside_r, near_c & (c < c0)),
            (inside_r, near_c & (c > c1)),
        )
        for row_sel, col_sel in strips:
            sel_r, sel_c = np.flatnonzero(row_sel), np.flatnonzero(col_sel)
            if sel_r.size and sel_c.size:
                image[np.ix_(sel_r, sel_c)] += self._streaks(r[sel_r], c[sel_c])

    def _streaks(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        dist = _box_distance(rows, cols, self.beamstop)
        phi = np.arctan2((rows - self.center[0]).astype(np.float32)[:, None],
                         (cols - self.center[1]).astype(np.float32)[None, :])
        idx = ((phi + np.float32(np.pi)) * np.float32(_ANGLE_BINS / (2 * np.pi))).astype(np.int32)
        idx %= _ANGLE_BINS
        streaks = self._streak_amp[idx] * np.exp(-dist / self._streak_len[idx])
        streaks *= _soft_step(dist - np.float32(1.0), 1.0)  # they start outside the dark square
        return streaks

    def __call__(self) -> np.ndarray:
        """The full frame (same as :meth:`render` with no arguments)."""
        return self.render()


class ArrayBackground:
    """A background image (e.g. from :func:`extract_backgrounds`) with the ``render`` API of
    :class:`ProceduralBackground`, so either can feed training pairs."""

    def __init__(self, image: np.ndarray) -> None:
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 2:
            raise BackgroundError(f"image must be 2-D, got shape {image.shape}")
        if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise BackgroundError("a background image must be finite and normalised to [0, 1]")
        self.image = image
        self.shape = image.shape

    def render(self, rows: slice | np.ndarray | None = None,
               cols: slice | np.ndarray | None = None) -> np.ndarray:
        """The image at the given rows and columns (slices or sorted index arrays)."""
        r = _axis_index(rows, self.shape[0], "rows")
        c = _axis_index(cols, self.shape[1], "cols")
        if isinstance(rows, slice) and isinstance(cols, slice):
            return self.image[rows, cols]
        return self.image[np.ix_(r, c)]


def procedural_background(
    shape: tuple[int, int],
    beamstop: tuple[int, int, int, int] | None = None,
    seed: int | np.random.Generator | None = None,
    *,
    center: tuple[float, float] | None = None,
) -> np.ndarray:
    """A random LabDCT-like background image in ``[0, 1]`` (see :class:`ProceduralBackground`).

    Parameters
    ----------
    shape : (int, int)
        Frame size ``(rows, cols)``.
    beamstop : (int, int, int, int) or None
        Beam-stop shadow ``(row0, row1, col0, col1)``, inclusive (``Geometry.beamstop``).
    seed : int, numpy.random.Generator or None
        Same seed, same image.
    center : (float, float) or None
        Direct-beam position ``(row, col)``; the beam stop's centre when None.

    Returns
    -------
    ndarray of float32, shape ``shape``
    """
    return ProceduralBackground(shape, beamstop, seed, center=center).render()


def beam_center_pixel(geometry) -> tuple[float, float]:
    """Detector pixel ``(row, col)`` where the direct beam (the lab x axis) arrives.

    Differs from ``geometry.center`` when the detector is offset or tilted.
    """
    hit = geometry.intersect(np.zeros(3), np.array([1.0, 0.0, 0.0]))
    row, col = geometry.lab_to_pixel(hit)
    if not (np.isfinite(row) and np.isfinite(col)):
        return tuple(float(v) for v in geometry.center)
    return float(row), float(col)


def background_for_geometry(geometry, seed: int | np.random.Generator | None = None
                            ) -> ProceduralBackground:
    """A :class:`ProceduralBackground` matching a
    :class:`~labdct_live.simulation.geometry.Geometry`.

    Uses its detector shape and beam-stop shadow; the line and the bright centre follow the
    direct beam (:func:`beam_center_pixel`).
    """
    beamstop = geometry.beamstop if geometry.has_beamstop else None
    return ProceduralBackground(geometry.detector_shape, beamstop, seed,
                                center=beam_center_pixel(geometry))
