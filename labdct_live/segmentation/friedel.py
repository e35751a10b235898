"""Friedel pairs between frames 180° apart: spot centroids of one frame mirrored into the other
(about the horizontal line through the beam centre, or exactly through the geometry), matched
within a tolerance, net of a control mirror that counts chance matches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = [
    "FrameSpots",
    "FriedelMatch",
    "DEFAULT_CONTROL_SHIFT",
    "DEFAULT_TOLERANCE",
    "STATIC_FRACTION",
    "frame_spots",
    "friedel_match",
    "friedel_mirror",
    "friedel_pairs",
    "friedel_shift_bound",
    "mirror_about_row",
]


#: Default matching radius of a mirrored centroid, pixels.
DEFAULT_TOLERANCE = 10.0

#: Default sideways shift of the control mirrors, pixels.
DEFAULT_CONTROL_SHIFT = 50.0

#: A pixel segmented in at least this fraction of the frames is static background.
STATIC_FRACTION = 0.9

#: A spot with at least this fraction of its pixels static is a static spot.
STATIC_SPOT_FRACTION = 0.5


@dataclass(frozen=True)
class FrameSpots:
    """Connected components of one mask.

    Attributes
    ----------
    shape : (int, int)
        Frame shape.
    labels : ndarray or None
        int32 label image (0 = background); None when dropped to save memory.
    centroids : ndarray
        ``(n, 2)`` float ``(row, col)`` of labels ``1..n``.
    sizes : ndarray
        ``(n,)`` pixel counts.
    static : ndarray
        ``(n,)`` bool, True for a static spot (all False without a static map).
    """

    shape: tuple[int, int]
    labels: np.ndarray | None
    centroids: np.ndarray
    sizes: np.ndarray
    static: np.ndarray

    def without_labels(self) -> FrameSpots:
        """The same spots without the label image."""
        return FrameSpots(self.shape, None, self.centroids, self.sizes, self.static)

    def __len__(self) -> int:
        return len(self.sizes)


def frame_spots(mask: np.ndarray, static: np.ndarray | None = None,
                static_spot_fraction: float = STATIC_SPOT_FRACTION) -> FrameSpots:
    """Label a mask (binary or label image) and measure its components.

    Parameters
    ----------
    mask : ndarray
        2-D; non-zero pixels are spot pixels (8-connected components).
    static : ndarray of bool, optional
        Static pixels (:func:`static_map` thresholded); marks static spots.
    static_spot_fraction : float
        Share of a spot's pixels that must be static for it to be a static spot.

    Returns
    -------
    FrameSpots
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {mask.shape}")
    labels, n = ndimage.label(mask != 0, structure=np.ones((3, 3), bool))
    labels = labels.astype(np.int32, copy=False)
    if n == 0:
        empty = np.zeros(0)
        return FrameSpots(labels.shape, labels, np.zeros((0, 2)), empty.astype(np.int64),
                          empty.astype(bool))
    index = np.arange(1, n + 1)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    rows, cols = np.indices(labels.shape, sparse=True)
    flat = labels.ravel()
    r = np.bincount(flat, weights=np.broadcast_to(rows, labels.shape).ravel(),
                    minlength=n + 1)[1:] / sizes
    c = np.bincount(flat, weights=np.broadcast_to(cols, labels.shape).ravel(),
                    minlength=n + 1)[1:] / sizes
    if static is not None:
        if static.shape != labels.shape:
            raise ValueError(f"static map {static.shape} and mask {labels.shape} differ")
        share = ndimage.mean(static.astype(float), labels, index)
        is_static = np.asarray(share) >= static_spot_fraction
    else:
        is_static = np.zeros(n, bool)
    return FrameSpots(labels.shape, labels, np.column_stack([r, c]), sizes, is_static)


def friedel_pairs(omegas: np.ndarray, tol: float = 1e-3) -> list[tuple[int, int]]:
    """Pairs of frames ``(i, j)``, ``i < j``, whose angles differ by 180° (modulo 360°).

    Parameters
    ----------
    omegas : array-like
        Rotation angles, degrees, in frame order.
    tol : float
        Angular tolerance, degrees.

    Examples
    --------
    >>> friedel_pairs([180, 90, 0, -90, -180])
    [(0, 2), (1, 3), (2, 4)]
    """
    w = np.asarray(omegas, dtype=float)
    pairs = []
    for i in range(len(w)):
        d = np.abs(((w[i + 1:] - w[i] - 180.0) + 180.0) % 360.0 - 180.0)
        pairs += [(i, i + 1 + int(j)) for j in np.nonzero(d <= tol)[0]]
    return pairs


@dataclass(frozen=True)
class FriedelMatch:
    """Friedel matching of the spots of frame A into frame B (one direction).

    ``consistent = matched - control``; ``share = consistent / spots`` (0 without spots).
    """

    spots: int  #: components of A
    static: int  #: static spots of A (never matched)
    checkable: int  #: non-static spots of A whose mirror lands on B's detector, off the stop
    #: spots of A with a spot of B within the tolerance of the mirror (counted where the
    #: control mirrors are on the detector too, scaled to all checkable spots)
    matched: float
    control: float  #: the same with the control mirrors (mean of the two shifts)

    @property
    def consistent(self) -> float:
        return self.matched - self.control

    @property
    def share(self) -> float:
        return self.consistent / self.spots if self.spots else 0.0


def _count_within(tree: cKDTree | None, points: np.ndarray, tolerance: float) -> int:
    if tree is None or len(points) == 0:
        return 0
    dist, _ = tree.query(points, k=1, distance_upper_bound=tolerance)
    return int(np.count_nonzero(np.isfinite(dist)))


def _checkable(points: np.ndarray, shape: tuple[int, int], exclude: np.ndarray | None
               ) -> np.ndarray:
    """Which points lie on the detector and, given ``exclude``, outside the beam stop."""
    inside = ((points[:, 0] >= -0.5) & (points[:, 0] <= shape[0] - 0.5)
              & (points[:, 1] >= -0.5) & (points[:, 1] <= shape[1] - 0.5))
    if exclude is not None and len(points):
        r = np.clip(np.rint(points[:, 0]).astype(int), 0, shape[0] - 1)
        c = np.clip(np.rint(points[:, 1]).astype(int), 0, shape[1] - 1)
        inside &= ~exclude[r, c]
    return inside


def friedel_match(a: FrameSpots, b: FrameSpots, center_row: float | Callable,
                  tolerance: float = DEFAULT_TOLERANCE,
                  control_shift: float = DEFAULT_CONTROL_SHIFT,
                  exclude: np.ndarray | None = None) -> FriedelMatch:
    """Count the spots of ``a`` whose Friedel mate (mirror about ``center_row``) is in ``b``.

    Parameters
    ----------
    a, b : FrameSpots
        Spots of two frames 180° apart (:func:`frame_spots`).
    center_row : float or callable
        Row of the beam centre (fractional pixels): the mirror line; or a mirror
        ``(rows, cols) -> (rows', cols')`` such as :func:`friedel_mirror` of a tilted
        geometry.
    tolerance : float
        Largest distance (pixels) between the mirrored centroid of a spot of ``a`` and the
        centroid of a spot of ``b`` for a match (cover the off-axis shift,
        :func:`friedel_shift_bound`).
    control_shift : float
        Sideways (column) shift of the two control mirrors, pixels; must exceed
        ``tolerance`` (otherwise the control finds the real mates).
    exclude : ndarray of bool, optional
        Beam-stop shadow: mirrors landing there are not checkable.

    Returns
    -------
    FriedelMatch
    """
    if control_shift <= 2 * tolerance:
        raise ValueError(f"control_shift ({control_shift:g} px) must exceed twice the "
                         f"tolerance ({tolerance:g} px), or the control finds the true mates")
    shape = a.shape
    keep = ~a.static
    mirror = center_row if callable(center_row) else mirror_about_row(center_row)
    points = a.centroids[keep]
    points = (np.column_stack(mirror(points[:, 0], points[:, 1])) if len(points)
              else np.zeros((0, 2)))
    points = points[np.all(np.isfinite(points), axis=1)]
    shifts = [np.array([0.0, s]) for s in (control_shift, -control_shift)]
    checkable = _checkable(points, shape, exclude)
    # Matches and chance matches are counted on the mirrors whose control positions are on
    # the detector too (a control off the detector finds nothing and would undercount chance
    # matches), then scaled to all checkable mirrors.
    both = checkable.copy()
    for offset in shifts:
        both &= _checkable(points + offset, shape, exclude)
    points = points[both]
    scale = checkable.sum() / len(points) if len(points) else 0.0
    targets = b.centroids[~b.static]
    tree = cKDTree(targets) if len(targets) else None
    matched = scale * _count_within(tree, points, tolerance)
    control = scale * 0.5 * sum(_count_within(tree, points + offset, tolerance)
                                for offset in shifts)
    return FriedelMatch(spots=len(a), static=int(a.static.sum()), checkable=int(checkable.sum()),
                        matched=float(matched), control=float(control))


def mirror_about_row(center_row: float) -> Callable[[np.ndarray, np.ndarray],
                                                     tuple[np.ndarray, np.ndarray]]:
    """The on-axis Friedel mirror of an untilted detector: ``row' = 2 center_row - row``."""
    def mirror(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return 2.0 * center_row - np.asarray(rows, float), np.asarray(cols, float)
    return mirror


def friedel_mirror(geometry) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The exact Friedel mirror of a geometry (tilt and offset included), for a grain at the
    origin: pixel -> ray direction ``k`` from the origin -> mate ``(k_x, k_y, -k_z)`` -> pixel.

    Untilted and without offset it is :func:`mirror_about_row` at the beam-centre row.

    Examples
    --------
    >>> from labdct_live.simulation.geometry import Geometry
    >>> m = friedel_mirror(Geometry(lss=100, lsd=100, detector_shape=(101, 101), pixel_size=0.1,
    ...                             beamstop=(0, -1, 0, -1)))
    >>> [round(float(v), 6) for v in np.ravel(m(np.array([10.0]), np.array([30.0])))]
    [90.0, 30.0]
    """
    def mirror(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = geometry.pixel_to_lab(np.asarray(rows, float), np.asarray(cols, float))
        k = p * np.array([1.0, 1.0, -1.0])
        hit = geometry.intersect(np.zeros_like(k), k)
        return geometry.lab_to_pixel(hit)
    return mirror


def friedel_shift_bound(geometry, sample_radius: float, sample_height: float | None = None,
                        quantile: float = 0.95, n: int = 20000, seed: int = 0) -> float:
    """How far (pixels) a grain off the axis moves its Friedel mate from the mirror position.

    Grain positions are drawn uniformly in the illuminated cylinder (radius
    ``sample_radius``, height ``sample_height``, mm) and reflection directions uniformly on
    the sphere; for every ray that reaches the detector outside the beam stop at ω and whose
    mate reaches it at ω + 180°, the distance between the mate's spot, mirrored about the beam
    centre row, and the spot is measured exactly (ray tracing as in docs/physics.md §2); the
    mirror is :func:`friedel_mirror` (tilt included), so the bound is the off-axis part only.

    Parameters
    ----------
    geometry : Geometry
        The instrument.
    sample_radius : float
        Radius of the illuminated sample, mm.
    sample_height : float, optional
        Its height, mm (default ``2 * sample_radius``).
    quantile : float
        Returned quantile of the distance.
    n : int
        Number of random (position, reflection) draws.
    seed : int
        Random seed.

    Returns
    -------
    float
        The ``quantile`` of the mate's distance from the mirror position, pixels; NaN when
        no draw reaches the detector.
    """
    rng = np.random.default_rng(seed)
    h = 2.0 * sample_radius if sample_height is None else sample_height
    rad = sample_radius * np.sqrt(rng.random(n))
    phi = rng.random(n) * 2 * np.pi
    pos = np.column_stack([rad * np.cos(phi), rad * np.sin(phi), (rng.random(n) - 0.5) * h])
    g = rng.normal(size=(n, 3))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    src = geometry.source

    def spot(r: np.ndarray, ghat: np.ndarray):
        k_in = r - src
        k_in /= np.linalg.norm(k_in, axis=1, keepdims=True)
        sin_t = -(k_in * ghat).sum(axis=1)
        k_out = k_in + 2 * sin_t[:, None] * ghat
        hit = geometry.intersect(r, k_out)
        row, col = geometry.lab_to_pixel(hit)
        rows, cols = geometry.detector_shape
        ok = ((sin_t > 0) & np.isfinite(row) & (row >= 0) & (row <= rows - 1) & (col >= 0)
              & (col <= cols - 1))
        ok[ok] &= ~geometry.in_beamstop(row[ok], col[ok])
        return row, col, ok

    row, col, ok = spot(pos, g)
    mate_pos = pos * np.array([-1.0, -1.0, 1.0])
    mate_g = g * np.array([1.0, 1.0, -1.0])
    row2, col2, ok2 = spot(mate_pos, mate_g)
    both = ok & ok2
    if not both.any():
        return float("nan")
    mrow, mcol = friedel_mirror(geometry)(row[both], col[both])
    d = np.hypot(mrow - row2[both], mcol - col2[both])
    d = d[np.isfinite(d)]
    return float(np.quantile(d, quantile)) if len(d) else float("nan")
