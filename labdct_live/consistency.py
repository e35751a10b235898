"""Ground-truth-free quality score of a segmentation: physical consistency over the ω scan.

A real diffraction spot obeys the physics of the scan; noise, zingers and background
structure do not. Three checks need only the masks, the rotation angles and the beam centre:

**Friedel pairs** (the score). With the rotation axis vertical (z), reflection **G** of a grain
at angle ω and its Friedel mate −**G** at ω + 180° are related by ``R_z(180°)(−G) = (G_x, G_y,
−G_z)``: for a grain on the axis the mate's diffracted ray is the first one mirrored in z, so the
mate's spot lies in the same column, mirrored about the horizontal line through the beam
centre: ``row' = 2 row_0 − row``. A grain off the axis shifts the mate by an amount that grows
with its distance from the axis (:func:`friedel_shift_bound` computes it from the geometry), so
a spot counts as Friedel-matched when a spot of the other frame has its centroid within a
tolerance of the mirrored centroid. Chance matches are estimated with *control* mirrors (the
mirrored centroid moved sideways by ``control_shift`` pixels, both ways, averaged) and
subtracted: ``consistent = matched − control``. The share ``consistent / spots`` is near 1 for
a segmentation of real spots and near 0 for noise, whatever the number of components.

**Recurrence over ω**: a spot whose mask (grown by a pixel) overlaps a spot of the previous or
next frame, net of a sideways-shifted control. Informative for fine ω steps; at steps of
several degrees a reflection moves by more than its size between frames and the net
recurrence of true spots is small too.

**Static structure**: pixels segmented in at least ``static_fraction`` (90 %) of the frames do
not move with ω: background structure (streaks around the beam stop, hot pixels), not spots.
Spots lying mostly (≥ 50 % of their pixels) on static pixels are counted as *static spots*;
they are never Friedel-matched (a static pattern that happens to be mirror-symmetric would
otherwise pass) but stay in the spot count, so they lower the share.

:func:`score_scan` runs all three over a stack of masks and returns a :class:`ScanConsistency`
(per-frame and per-pair tables and a :class:`ScanSummary`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = ["FrameSpots", "FriedelMatch", "ScanConsistency", "ScanSummary",
           "DEFAULT_CONTROL_SHIFT", "DEFAULT_TOLERANCE", "STATIC_FRACTION",
           "frame_spots", "friedel_match", "friedel_mirror", "friedel_pairs",
           "fit_mirror_row", "friedel_shift_bound", "mirror_about_row",
           "recurrence", "score_scan", "static_map"]

#: Default matching radius of a mirrored centroid, pixels.
DEFAULT_TOLERANCE = 6.0
#: Default sideways shift of the control mirrors, pixels.
DEFAULT_CONTROL_SHIFT = 40.0
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
    matched: int  #: spots of A with a spot of B within the tolerance of the mirror
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
    inside = ((points[:, 0] >= -0.5) & (points[:, 0] <= shape[0] - 0.5)
              & (points[:, 1] >= -0.5) & (points[:, 1] <= shape[1] - 0.5))
    if exclude is not None and len(points):
        r = np.clip(np.rint(points[:, 0]).astype(int), 0, shape[0] - 1)
        c = np.clip(np.rint(points[:, 1]).astype(int), 0, shape[1] - 1)
        inside &= ~exclude[r, c]
    points = points[inside]
    targets = b.centroids[~b.static]
    tree = cKDTree(targets) if len(targets) else None
    matched = _count_within(tree, points, tolerance)
    control = 0.5 * sum(_count_within(tree, points + np.array([0.0, s]), tolerance)
                        for s in (control_shift, -control_shift))
    return FriedelMatch(spots=len(a), static=int(a.static.sum()), checkable=len(points),
                        matched=matched, control=float(control))


def recurrence(spots: FrameSpots, neighbours: Sequence[np.ndarray], grow: int = 1,
               control_shift: int = int(DEFAULT_CONTROL_SHIFT)) -> tuple[int, float]:
    """Spots of a frame overlapping a spot of a neighbouring frame (ω ± 1 step).

    Parameters
    ----------
    spots : FrameSpots
        The frame's spots; static spots are not counted.
    neighbours : sequence of ndarray
        Masks of the neighbouring frames (non-zero = spot).
    grow : int
        Pixels the neighbours' masks are grown by before the overlap test.
    control_shift : int
        Sideways shift (columns) of the neighbours' masks for the chance-overlap control.

    Returns
    -------
    (int, float)
        ``(recurring, control)``: non-static spots overlapping a neighbour's spot, and the
        mean of the same count with the neighbours shifted by ``±control_shift`` columns.
    """
    n = len(spots)
    if spots.labels is None:
        raise ValueError("recurrence needs the spots' label image (frame_spots(mask))")
    if n == 0 or not neighbours:
        return 0, 0.0
    union = np.zeros(spots.labels.shape, bool)
    for m in neighbours:
        union |= np.asarray(m) != 0
    if grow > 0:
        union = ndimage.binary_dilation(union, iterations=grow)
    index = np.arange(1, n + 1)
    keep = ~spots.static

    def count(m: np.ndarray) -> int:
        hit = np.asarray(ndimage.maximum(m, spots.labels, index)) > 0
        return int(np.count_nonzero(hit & keep))

    control = 0.5 * sum(count(np.roll(union, s, axis=1)) for s in (control_shift,
                                                                  -control_shift))
    return count(union), float(control)


def static_map(masks: Sequence[np.ndarray] | Callable[[int], np.ndarray],
               n: int | None = None) -> np.ndarray:
    """Fraction of the frames in which each pixel is segmented.

    Parameters
    ----------
    masks : sequence of ndarray or callable
        The masks, or ``index -> mask`` with ``n`` given.
    n : int, optional
        Number of masks when ``masks`` is a callable.

    Returns
    -------
    ndarray
        float32 image in [0, 1].
    """
    get = masks if callable(masks) else masks.__getitem__
    n = len(masks) if n is None else n  # type: ignore[arg-type]
    if n < 1:
        raise ValueError("static_map needs at least one mask")
    total = None
    for i in range(n):
        m = np.asarray(get(i)) != 0
        if total is None:
            total = np.zeros(m.shape, np.int32)
        elif m.shape != total.shape:
            raise ValueError(f"mask {i} has shape {m.shape}, the first {total.shape}")
        total += m
    return (total / float(n)).astype(np.float32)


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
    >>> from labdct_live.geometry import Geometry
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


@dataclass(frozen=True)
class ScanSummary:
    """Scan-level consistency of a segmentation (means over frames)."""

    n_frames: int
    n_pairs: int  #: Friedel pairs of frames
    spots_per_frame: float
    static_spots_per_frame: float
    consistent_per_frame: float  #: Friedel-consistent spots (net of control) per paired frame
    share: float  #: Friedel-consistent spots / spots, over all paired frames
    recurrence_share: float  #: net recurring spots / spots, over all frames
    static_pixels: int  #: pixels segmented in at least ``static_fraction`` of the frames
    center_row: float  #: the mirror row (NaN for a geometry's mirror)
    tolerance: float
    control_shift: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ScanConsistency:
    """Result of :func:`score_scan`."""

    per_frame: pd.DataFrame  #: one row per frame
    per_pair: pd.DataFrame  #: one row per Friedel pair of frames
    summary: ScanSummary
    static: np.ndarray  #: the static-fraction map (float32)


def score_scan(masks: Sequence[np.ndarray] | Callable[[int], np.ndarray],
               omegas: Sequence[float], center_row: float | Callable, *,
               tolerance: float = DEFAULT_TOLERANCE,
               control_shift: float = DEFAULT_CONTROL_SHIFT,
               exclude: np.ndarray | None = None,
               static_fraction: float = STATIC_FRACTION,
               recurrence_grow: int = 1,
               n: int | None = None,
               progress: bool = False) -> ScanConsistency:
    """Friedel, recurrence and static consistency of a segmented scan.

    Parameters
    ----------
    masks : sequence of ndarray or callable
        One mask per frame in ω order (binary or label images), or ``index -> mask``
        with ``n``.
    omegas : sequence of float
        Rotation angle of every frame, degrees.
    center_row : float or callable
        Beam-centre row (the Friedel mirror line), fractional pixels, or a mirror
        (:func:`friedel_mirror`).
    tolerance, control_shift : float
        See :func:`friedel_match`.
    exclude : ndarray of bool, optional
        Beam-stop shadow.
    static_fraction : float
        Pixels segmented in at least this share of the frames are static; ``> 1`` disables
        the static check.
    recurrence_grow : int
        See :func:`recurrence`.
    n : int, optional
        Number of frames when ``masks`` is a callable.
    progress : bool
        Show a progress bar.

    Returns
    -------
    ScanConsistency
    """
    from tqdm.auto import tqdm

    get = masks if callable(masks) else masks.__getitem__
    n = len(masks) if n is None else n  # type: ignore[arg-type]
    omegas = np.asarray(omegas, dtype=float)
    if len(omegas) != n:
        raise ValueError(f"{n} masks but {len(omegas)} rotation angles")
    if n < 2:
        raise ValueError("a scan needs at least two frames")
    fraction = static_map(get, n)
    static = fraction >= static_fraction if static_fraction <= 1 else None
    if exclude is not None and exclude.shape != fraction.shape:
        raise ValueError(f"exclude mask {exclude.shape} and masks {fraction.shape} differ")
    pairs = friedel_pairs(omegas)
    partners: dict[int, list[int]] = {}
    for i, j in pairs:
        partners.setdefault(i, []).append(j)
        partners.setdefault(j, []).append(i)
    # Spots of every frame, kept small: centroids, sizes, static flags (labels dropped).
    cache: list[FrameSpots] = []
    rec = []
    for k in tqdm(range(n), desc="consistency", unit="frame", disable=not progress):
        sp = frame_spots(get(k), static)
        neighbours = [get(j) for j in (k - 1, k + 1) if 0 <= j < n]
        rec.append(recurrence(sp, neighbours, grow=recurrence_grow,
                              control_shift=int(control_shift)))
        cache.append(sp.without_labels())
    rows_pair = []
    per_frame_matches: dict[int, list[FriedelMatch]] = {}
    for i, j in pairs:
        a, b = cache[i], cache[j]
        ab = friedel_match(a, b, center_row, tolerance, control_shift, exclude)
        ba = friedel_match(b, a, center_row, tolerance, control_shift, exclude)
        per_frame_matches.setdefault(i, []).append(ab)
        per_frame_matches.setdefault(j, []).append(ba)
        rows_pair.append({
            "frame_a": i, "frame_b": j, "omega_a": omegas[i], "omega_b": omegas[j],
            "spots_a": ab.spots, "spots_b": ba.spots,
            "static_a": ab.static, "static_b": ba.static,
            "matched_a": ab.matched, "matched_b": ba.matched,
            "control_a": ab.control, "control_b": ba.control,
            "consistent_a": ab.consistent, "consistent_b": ba.consistent,
            "share_a": ab.share, "share_b": ba.share,
        })
    rows = []
    for k in range(n):
        matches = per_frame_matches.get(k, [])
        spots = len(cache[k])
        row = {"frame": k, "omega": omegas[k], "spots": spots,
               "static_spots": int(cache[k].static.sum()),
               "friedel_frames": len(matches)}
        if matches:
            row["friedel_matched"] = float(np.mean([m.matched for m in matches]))
            row["friedel_control"] = float(np.mean([m.control for m in matches]))
            row["friedel_consistent"] = row["friedel_matched"] - row["friedel_control"]
            row["share"] = row["friedel_consistent"] / spots if spots else 0.0
        else:
            row.update(friedel_matched=np.nan, friedel_control=np.nan,
                       friedel_consistent=np.nan, share=np.nan)
        row["recurring"], row["recurring_control"] = rec[k]
        row["recurring_net"] = rec[k][0] - rec[k][1]
        rows.append(row)
    per_frame = pd.DataFrame(rows)
    per_pair = pd.DataFrame(rows_pair)
    paired = per_frame[per_frame.friedel_frames > 0]
    total_spots = int(per_frame.spots.sum())
    summary = ScanSummary(
        n_frames=n, n_pairs=len(pairs),
        spots_per_frame=float(per_frame.spots.mean()),
        static_spots_per_frame=float(per_frame.static_spots.mean()),
        consistent_per_frame=float(paired.friedel_consistent.mean()) if len(paired) else 0.0,
        share=(float(paired.friedel_consistent.sum() / paired.spots.sum())
               if len(paired) and paired.spots.sum() else 0.0),
        recurrence_share=(float(per_frame.recurring_net.sum() / total_spots)
                          if total_spots else 0.0),
        static_pixels=int(static.sum()) if static is not None else 0,
        center_row=float("nan") if callable(center_row) else float(center_row),
        tolerance=float(tolerance),
        control_shift=float(control_shift))
    return ScanConsistency(per_frame, per_pair, summary, fraction)


def fit_mirror_row(spots: Sequence[FrameSpots], omegas: Sequence[float], guess: float, *,
                   search: float = 12.0, step: float = 0.5,
                   tolerance: float = DEFAULT_TOLERANCE,
                   control_shift: float = DEFAULT_CONTROL_SHIFT,
                   exclude: np.ndarray | None = None) -> tuple[float, float]:
    """The mirror row within ``guess ± search`` that maximises the Friedel-consistent count.

    A label-free calibration of the beam-centre row (it absorbs a small detector tilt and
    the sample's height offset from the beam). Maximising over candidates biases the count
    of a pure-noise segmentation upwards by a spot or two; calibrate on a good segmentation
    (e.g. a threshold of the frame minus the stack median) and score others at that row.

    Parameters
    ----------
    spots : sequence of FrameSpots
        Spots of every frame (:func:`frame_spots`), in ω order.
    omegas : sequence of float
        Rotation angles, degrees.
    guess, search, step : float
        Candidate rows ``guess - search .. guess + search`` in steps of ``step`` pixels.
    tolerance, control_shift, exclude
        See :func:`friedel_match`.

    Returns
    -------
    (float, float)
        The best row and its mean consistent count per paired frame.
    """
    pairs = friedel_pairs(omegas)
    if not pairs:
        raise ValueError("no two frames are 180 degrees apart: no Friedel pairs to fit on")
    best = (guess, -np.inf)
    for row in np.arange(guess - search, guess + search + step / 2, step):
        total = 0.0
        for i, j in pairs:
            total += friedel_match(spots[i], spots[j], row, tolerance, control_shift,
                                   exclude).consistent
            total += friedel_match(spots[j], spots[i], row, tolerance, control_shift,
                                   exclude).consistent
        mean = total / (2 * len(pairs))
        if mean > best[1]:
            best = (float(row), float(mean))
    return best
