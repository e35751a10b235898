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
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import ndimage

from labdct_live.segmentation.friedel import (
    DEFAULT_CONTROL_SHIFT,
    DEFAULT_TOLERANCE,
    STATIC_FRACTION,
    frame_spots,
    friedel_match,
    friedel_pairs,
)

if TYPE_CHECKING:
    from labdct_live.segmentation.friedel import FrameSpots, FriedelMatch

__all__ = [
    "ScanConsistency",
    "ScanSummary",
    "fit_mirror_row",
    "recurrence",
    "score_scan",
    "static_map",
]


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
