"""The forward model of the reconstruction: predicted spots of a (position, orientation).

:class:`ForwardModel` binds a scan (frames turned into :class:`~.hitmaps.HitMaps`, ω,
geometry, material) to the numba kernels. The ray tracing is the simulator's
(:mod:`labdct_live.simulation._raytrace`): the Laue condition fixes the wavelength of each
reflection,
the energy must lie in the band ``[e_min, kvp - 2]`` keV, and the diffracted ray from the
point must meet the detector outside the beam stop (docs/physics.md §2).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from labdct_live.reconstruction import _kernels
from labdct_live.reconstruction.data import ScanData
from labdct_live.reconstruction.hitmaps import PIXEL_UNIT, HitMaps, build_hit_maps
from labdct_live.simulation._raytrace import HC

__all__ = ["ForwardModel", "Predicted", "Scores", "detector_vector"]


def detector_vector(geometry) -> np.ndarray:
    """The detector description the ray kernel reads: origin, normal, in-plane axes (y, z),
    pixel size, centre row and column (the simulator's layout)."""
    r = geometry._R
    return np.array([*geometry.detector_origin, *r[:, 0], *r[:, 1], *r[:, 2],
                     geometry.pixel_size, geometry.center[0], geometry.center[1]],
                    dtype=np.float64)


@dataclass(frozen=True)
class Scores:
    """Predicted spots, hits and the smooth score of each (point, orientation) pair."""

    n_pred: np.ndarray
    n_hit: np.ndarray
    soft: np.ndarray
    depth: np.ndarray  #: summed depth (px, capped) of the predicted spots inside spots

    @property
    def mean_depth(self) -> np.ndarray:
        """Mean capped depth (px) of the predicted spots inside the segmented spots."""
        return np.where(self.n_pred > 0, self.depth / np.maximum(self.n_pred, 1), 0.0)

    @property
    def completeness(self) -> np.ndarray:
        """Hits / predicted spots (0 where nothing is predicted)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n_pred > 0, self.n_hit / np.maximum(self.n_pred, 1), 0.0)


@dataclass(frozen=True)
class Predicted:
    """The recorded spots of one (point, orientation): map, pixel and distance (px) to the
    nearest segmented pixel of each."""

    map: np.ndarray
    row: np.ndarray
    col: np.ndarray
    distance: np.ndarray


@dataclass
class ForwardModel:
    """Predict and test spots of a scan.

    Build it with :meth:`from_scan`. ``map_index[k]`` is the map tested for frame ``k``:
    the identity, or a permutation for the ω-scrambled null test (:meth:`scrambled`).
    """

    scan: ScanData
    maps: HitMaps
    map_index: np.ndarray

    def __post_init__(self) -> None:
        g = self.scan.geometry
        material = self.scan.material
        refl = material.reflections
        self._bh = np.ascontiguousarray(refl.hkl @ material.B.T, dtype=np.float64)
        self._gn = np.ascontiguousarray(refl.g_norm, dtype=np.float64)
        w = np.radians(self.scan.omegas)
        self._cos = np.cos(w)
        self._sin = np.sin(w)
        self._det = detector_vector(g)
        self._bs = np.array(g.beamstop if g.has_beamstop else (1, 0, 1, 0), dtype=np.int64)
        self._shape = np.array(g.detector_shape, dtype=np.int64)
        self._sx = -float(g.lss)
        self._fill: dict[float, float] = {}

    def polar_fill(self, tol_deg: float) -> float:
        """Fraction of the polar maps within ``tol_deg`` of a segmented direction: how
        much a random direction test matches (cached)."""
        if tol_deg not in self._fill:
            self._fill[tol_deg] = float(np.mean(self.maps.polar <= tol_deg
                                                / self.maps.polar_unit))
        return self._fill[tol_deg]

    @classmethod
    def from_scan(cls, scan: ScanData, maps: HitMaps | None = None, *, depth: bool = False,
                  progress: bool = False) -> ForwardModel:
        """The forward model of a scan (its distance maps are computed unless given;
        ``depth`` adds the depth maps of the optional tie-break)."""
        maps = maps or build_hit_maps(scan.frames, scan.geometry, depth=depth,
                                      progress=progress)
        return cls(scan, maps, np.arange(scan.n_frames, dtype=np.int64))

    def scrambled(self, rng: np.random.Generator) -> ForwardModel:
        """The same model tested against frames at the wrong ω (a random derangement)."""
        n = self.scan.n_frames
        perm = rng.permutation(n)
        for _ in range(100):
            if n < 2 or not np.any(perm == np.arange(n)):
                break
            perm = rng.permutation(n)
        return replace(self, map_index=perm.astype(np.int64))

    @property
    def n_reflections(self) -> int:
        """Reflections tested per frame (hkl of the material, Friedel mates included)."""
        return len(self._gn)

    def frame_order(self, frames: np.ndarray | None = None) -> np.ndarray:
        """Frames to test, in an order that spreads ω (so a partial score is representative)."""
        idx = np.arange(self.scan.n_frames) if frames is None else np.asarray(frames)
        n = len(idx)
        if n <= 2:
            return idx
        stride = max(1, int(round(n / 7)))
        order = np.concatenate([np.arange(s, n, stride) for s in range(stride)])
        return idx[order]

    def coarse(self, seed: np.ndarray, mats: np.ndarray, *, tol_deg: float,
               frames: np.ndarray | None = None, abort_after: int = 30,
               abort_frac: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Direction-match counts ``(n_pred, n_match)`` of orientations ``mats`` at ``seed``.

        Parameters
        ----------
        seed : ndarray, shape (3,)
            Sample-frame position (mm).
        mats : ndarray, shape (O, 3, 3)
            Orientation matrices U.
        tol_deg : float
            Largest scattering-vector angle of a match (degrees).
        frames : ndarray of int, optional
            Frames to use (default all).
        abort_after, abort_frac : int, float
            Abandon an orientation with fewer than ``abort_frac`` matches after
            ``abort_after`` predictions.
        """
        order = self.frame_order(frames)
        n_o = len(mats)
        n_pred = np.zeros(n_o, dtype=np.int64)
        n_match = np.zeros(n_o, dtype=np.int64)
        tol_units = tol_deg / self.maps.polar_unit
        _kernels.coarse_scores(
            np.asarray(seed, np.float64), np.ascontiguousarray(mats, np.float64), self._bh,
            self._gn, self._cos[order], self._sin[order], self.map_index[order], self._det,
            self._sx, self.scan.e_min, self.scan.e_max, self._shape, self._bs, self.maps.polar,
            self.maps.tt_step, self.maps.eta_step, tol_units, abort_after, abort_frac,
            n_pred, n_match)
        return n_pred, n_match

    def score(self, points: np.ndarray, mats: np.ndarray, *, tol_px: float = 0.5,
              sigma_px: float = 0.0, depth_cap_px: float = 0.0,
              frames: np.ndarray | None = None, abort_after: int = 0,
              abort_frac: float = 0.0) -> Scores:
        """Forward-model completeness of (point, orientation) pairs at pixel resolution.

        Parameters
        ----------
        points : ndarray, shape (P, 3) or (3,)
            Sample-frame positions (mm).
        mats : ndarray, shape (P, 3, 3) or (3, 3)
            Orientation matrices U, one per point.
        tol_px : float
            A predicted spot is a hit within this distance (px) of a segmented pixel.
        sigma_px : float
            Width of the smooth score ``Σ exp(-d²/2σ²)`` (0: not computed).
        depth_cap_px : float
            Cap of the summed depth inside spots (0: not computed).
        frames : ndarray of int, optional
            Frames to use (default all).
        abort_after, abort_frac : int, float
            Early abandon of hopeless pairs (see :func:`._kernels.pixel_scores`).

        Returns
        -------
        Scores
        """
        points = np.ascontiguousarray(np.atleast_2d(points), np.float64)
        mats = np.ascontiguousarray(np.asarray(mats, np.float64).reshape(-1, 3, 3))
        if len(mats) == 1 and len(points) > 1:
            mats = np.ascontiguousarray(np.broadcast_to(mats, (len(points), 3, 3)))
        order = self.frame_order(frames)
        n = len(points)
        n_pred = np.zeros(n, dtype=np.int64)
        n_hit = np.zeros(n, dtype=np.int64)
        soft = np.zeros(n, dtype=np.float64)
        deep = np.zeros(n, dtype=np.float64)
        depth = self.maps.depth
        if depth_cap_px > 0 and depth is None:
            raise ValueError("depth_cap_px > 0 needs depth maps: build_hit_maps(..., depth=True)")
        if depth is None:
            depth = np.zeros((1, 1, 1), dtype=np.uint8)
        kernel = _kernels.pixel_scores if n >= 16 else _kernels.pixel_scores_serial
        kernel(
            points, mats, self._bh, self._gn, self._cos[order], self._sin[order],
            self.map_index[order], self._det, self._sx, self.scan.e_min, self.scan.e_max,
            self._shape, self._bs, self.maps.pixel, depth, PIXEL_UNIT,
            float(depth_cap_px), float(tol_px), float(sigma_px), int(abort_after),
            float(abort_frac), n_pred, n_hit, soft, deep)
        return Scores(n_pred, n_hit, soft, deep)

    def predict(self, point: np.ndarray, mat: np.ndarray) -> Predicted:
        """The recorded spots of one (point, orientation) on every frame.

        Parameters
        ----------
        point : ndarray, shape (3,)
            Sample-frame position (mm).
        mat : ndarray, shape (3, 3)
            Orientation U.

        Returns
        -------
        Predicted
        """
        size = self.scan.n_frames * self.n_reflections
        maps = np.empty(size, dtype=np.int64)
        rows, cols, dist = (np.empty(size) for _ in range(3))
        x = np.asarray(point, np.float64)
        n = _kernels.predicted_spots(
            x[0], x[1], x[2], np.ascontiguousarray(mat, np.float64), self._bh, self._gn,
            self._cos, self._sin, self.map_index, self._det, self._sx, self.scan.e_min,
            self.scan.e_max, self._shape, self._bs, self.maps.pixel, PIXEL_UNIT, maps, rows,
            cols, dist)
        return Predicted(maps[:n], rows[:n], cols[:n], dist[:n])

    def score_grains(self, points: np.ndarray, pair_grain: np.ndarray, mats: np.ndarray,
                     centres: np.ndarray, radius: float, *, tol_px: float = 0.5,
                     abort_after: int = 0, abort_frac: float = 0.0) -> Scores:
        """:meth:`score` of many points against a few grains, faster.

        Each grain first lists the (frame, reflection) pairs it can record from within
        ``radius`` of its centre (a relaxed Laue, energy and detector test at the centre);
        the points are then traced on those pairs only, which are a small fraction of all
        frames x reflections. Same results as :meth:`score` for points within ``radius``.

        Parameters
        ----------
        points : ndarray, shape (P, 3)
        pair_grain : ndarray of int, shape (P,)
            Grain (row of ``mats``/``centres``) tested at each point.
        mats, centres : ndarray, shapes (G, 3, 3), (G, 3)
        radius : float
            Largest distance (mm) of a point from its grain's centre.
        """
        g = self.scan.geometry
        order = self.frame_order()
        mats = np.ascontiguousarray(mats, np.float64)
        centres = np.ascontiguousarray(centres, np.float64)
        sin_lo = HC * self._gn / (4 * np.pi * self.scan.e_max)
        sin_hi = HC * self._gn / (4 * np.pi * self.scan.e_min)
        sin_margin = 1.05 * radius / max(g.lss - radius, 1e-6) + 1e-4
        px_margin = (g.lss + g.lsd) / g.lss * radius / g.pixel_size + 4.0
        active = np.zeros((len(mats), len(order), self.n_reflections), dtype=np.bool_)
        cos_w = np.ascontiguousarray(self._cos[order])
        sin_w = np.ascontiguousarray(self._sin[order])
        _kernels.active_reflections(centres, mats, self._bh, self._gn, cos_w, sin_w,
                                    self._det, self._sx, sin_lo, sin_hi, sin_margin,
                                    self._shape, px_margin, active)
        gi, fi, ji = np.nonzero(active)
        start = np.searchsorted(gi, np.arange(len(mats) + 1)).astype(np.int64)
        points = np.ascontiguousarray(np.atleast_2d(points), np.float64)
        n = len(points)
        n_pred = np.zeros(n, dtype=np.int64)
        n_hit = np.zeros(n, dtype=np.int64)
        _kernels.pixel_scores_active(
            points, np.ascontiguousarray(pair_grain, np.int64), mats, self._bh, self._gn,
            cos_w, sin_w, np.ascontiguousarray(self.map_index[order]), start,
            fi.astype(np.int64), ji.astype(np.int64), self._det, self._sx, self.scan.e_min,
            self.scan.e_max, self._shape, self._bs, self.maps.pixel, PIXEL_UNIT,
            float(tol_px), int(abort_after), float(abort_frac), n_pred, n_hit)
        zeros = np.zeros(n)
        return Scores(n_pred, n_hit, zeros, zeros)
