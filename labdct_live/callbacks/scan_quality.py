"""Is the scan good enough yet? The scan-quality signal of a live grain map and its decision.

Each update of the live grain map (:mod:`labdct_live.callbacks.live_grainmap`) is summed up
as a :class:`ScanQuality`: how many grains, how complete, how much the map changed since the
previous update, what share of the segmented spots the map explains, how the ω range is
covered, and the exposure monitor's advice. :func:`decide` turns the history of updates into
one of three decisions, by the rule of :class:`DecisionRule` (docs/live-grainmap.md):

``raise exposure``
    The monitor advises at least ``raise_factor`` times the current exposure **and** the map
    suffers for it (median completeness or explained share below their floors): the spots are
    too weak to be segmented.
``enough``
    The ω range is covered (at least ``min_frames`` frames, no gap wider than ``max_gap``),
    the map is stable (at most ``stable_change`` of the voxels off the grain boundaries
    changed grain, and no grain appeared or vanished, in each of the last
    ``stable_updates`` updates) and good (median completeness and explained share at their
    floors).
``continue``
    Anything else.

This is the one place where the exposure advice and the grain map meet: the adaptive plan
(:func:`labdct_live.acquisition.plans.quality_scan`) acts on the decision only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from labdct_live.reconstruction.orientations import misorientation_deg

__all__ = ["CONTINUE", "ENOUGH", "RAISE_EXPOSURE", "DecisionRule", "ScanQuality", "decide",
           "map_change", "omega_gap"]

CONTINUE, ENOUGH, RAISE_EXPOSURE = "continue", "enough", "raise exposure"


@dataclass(frozen=True)
class DecisionRule:
    """Thresholds of :func:`decide` (see the module docstring).

    Parameters
    ----------
    min_frames : int
        Least frames before a scan can be enough.
    max_gap : float
        Widest ω gap (degrees, on the full circle) of an enough scan.
    stable_change : float
        Largest share of the sample's voxels (off the grain boundaries) that may change
        grain between two updates of a stable map.
    stable_updates : int
        Updates in a row that must be stable.
    min_completeness : float
        Floor of the grains' median completeness.
    min_explained : float
        Floor of the share of segmented spots the map explains.
    raise_factor : float
        Advised / current exposure at which the exposure should go up.
    """

    min_frames: int = 20
    max_gap: float = 20.0
    stable_change: float = 0.02
    stable_updates: int = 2
    min_completeness: float = 0.7
    min_explained: float = 0.7
    raise_factor: float = 1.5

    def __post_init__(self) -> None:
        if self.stable_updates < 1 or self.min_frames < 1:
            raise ValueError("stable_updates and min_frames must be at least 1")
        if not (0 <= self.stable_change <= 1 and self.raise_factor > 1 and self.max_gap > 0):
            raise ValueError("stable_change must lie in [0, 1], raise_factor above 1 and "
                             "max_gap above 0")


@dataclass(frozen=True)
class ScanQuality:
    """The scan-quality signal of one update of the live grain map.

    Attributes
    ----------
    update : int
        Update number (1, 2, ...).
    n_frames : int
        Frames the map was made from.
    max_gap : float
        Widest ω gap (degrees) between those frames, on the full circle.
    n_grains : int
    completeness_p10, completeness_median, completeness_p90 : float
        Spread of the grains' completeness (0 with no grain).
    change : float
        Share of the sample's voxels off the grain boundaries whose grain changed since the
        previous update (grains matched by orientation within 1°,
        :func:`map_change`); 1.0 at the first update.
    new_grains, lost_grains : int
        Grains with no match in the previous update, and previous grains with none now.
    spots_explained : float
        Share of the segmented spots (8-connected regions of all frames used) that a grain
        of the map hits.
    exposure, advised_exposure : float or None
        The latest frame's exposure (s) and the exposure monitor's advice (s).
    decision : str
        ``continue``, ``enough`` or ``raise exposure``.
    reason : str
        Why, in words.
    time : float
        Seconds the update took.
    finished : float
        When it was done (seconds since the epoch).
    """

    update: int
    n_frames: int
    max_gap: float
    n_grains: int
    completeness_p10: float
    completeness_median: float
    completeness_p90: float
    change: float
    new_grains: int
    lost_grains: int
    spots_explained: float
    exposure: float | None = None
    advised_exposure: float | None = None
    decision: str = CONTINUE
    reason: str = ""
    time: float = 0.0
    finished: float = 0.0

    def to_dict(self) -> dict:
        """Plain-python values (catalog metadata, table rows)."""
        return asdict(self)


def omega_gap(omegas) -> float:
    """Widest gap (degrees) between rotation angles on the full circle.

    Examples
    --------
    >>> omega_gap([0, 90, 180, 270])
    90.0
    >>> omega_gap([0, 10])
    350.0
    """
    w = np.sort(np.mod(np.asarray(omegas, float), 360.0))
    if w.size == 0:
        return 360.0
    gaps = np.diff(np.concatenate([w, [w[0] + 360.0]]))
    return float(gaps.max())


def map_change(previous_ids: np.ndarray | None, previous_orientations: np.ndarray | None,
               ids: np.ndarray, orientations: np.ndarray, mask: np.ndarray | None = None,
               angle: float = 1.0, interior: bool = True) -> tuple[float, int, int]:
    """How much a grain map changed since the previous one.

    Grains are matched by orientation (cubic misorientation below ``angle`` degrees; each
    previous grain goes to the closest current one); the change is the share of the mask's
    voxels whose matched grain differs. With ``interior`` only voxels off the grain
    boundaries of both maps count: a boundary that moves by a voxel as frames are added is
    not a change of the map, a grain that appears, vanishes or takes a region is.

    Parameters
    ----------
    previous_ids, ids : ndarray of int, shape (Z, Y, X)
        Grain id per voxel (0 = none); ``previous_ids`` None at the first update.
    previous_orientations, orientations : ndarray, shape (G + 1, 3, 3)
        Orientation of each id (row 0 unused).
    mask : ndarray of bool, optional
        The sample's voxels (all when None).
    angle : float
        Matching tolerance (degrees).
    interior : bool
        Leave out the voxels next to a grain boundary (6-neighbours) in either map.

    Returns
    -------
    change : float
        In [0, 1]; 1.0 when there is no previous map.
    new_grains, lost_grains : int

    Examples
    --------
    Two grains 10° apart, numbered the other way round in the new map, one voxel moved:

    >>> c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    >>> turned = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    >>> before = np.stack([np.eye(3), np.eye(3), turned])
    >>> now = np.stack([np.eye(3), turned, np.eye(3)])
    >>> old = np.array([[[1, 1, 2, 2]]])
    >>> map_change(old, before, np.array([[[2, 2, 1, 1]]]), now, interior=False)
    (0.0, 0, 0)
    >>> map_change(old, before, np.array([[[2, 2, 2, 1]]]), now, interior=False)
    (0.25, 0, 0)
    >>> map_change(old, before, np.array([[[2, 2, 2, 1]]]), now)  # a boundary moved
    (0.0, 0, 0)
    """
    n_now = int(ids.max(initial=0))
    if previous_ids is None or previous_orientations is None:
        return 1.0, n_now, 0
    if previous_ids.shape != ids.shape:
        raise ValueError(f"grain maps of different shapes: {previous_ids.shape} and "
                         f"{ids.shape}")
    n_before = int(previous_ids.max(initial=0))
    relabel = np.zeros(n_before + 1, dtype=np.int64)
    matched_now = np.zeros(n_now + 1, dtype=bool)
    if n_before and n_now:
        mis = misorientation_deg(np.asarray(previous_orientations[1:n_before + 1])[:, None],
                                 np.asarray(orientations[1:n_now + 1])[None])
        best = np.argmin(mis, axis=1)
        close = mis[np.arange(n_before), best] < angle
        relabel[1:] = np.where(close, best + 1, -1)
        matched_now[best[close] + 1] = True
    # a grain of the previous map with no match counts as changed wherever it was
    before = relabel[previous_ids]
    inside = np.ones(ids.shape, bool) if mask is None else np.asarray(mask, bool)
    if interior:
        inside = inside & ~_boundary(previous_ids) & ~_boundary(ids)
    changed = (before != ids) & inside
    change = float(changed.sum() / max(int(inside.sum()), 1))
    lost = int(np.count_nonzero(relabel[1:] < 0))
    new = int(n_now - np.count_nonzero(matched_now[1:]))
    return change, new, lost


def _boundary(ids: np.ndarray) -> np.ndarray:
    """Voxels with a 6-neighbour of another id."""
    edge = np.zeros(ids.shape, dtype=bool)
    for axis in range(ids.ndim):
        differs = np.diff(ids, axis=axis) != 0
        lo = [slice(None)] * ids.ndim
        hi = [slice(None)] * ids.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        edge[tuple(lo)] |= differs
        edge[tuple(hi)] |= differs
    return edge


def decide(history: list[ScanQuality], rule: DecisionRule | None = None) -> tuple[str, str]:
    """The decision for the newest update of ``history`` (see the module docstring).

    Parameters
    ----------
    history : list of ScanQuality
        All updates so far, oldest first (the decisions stored in them are ignored).
    rule : DecisionRule, optional

    Returns
    -------
    decision : str
        :data:`CONTINUE`, :data:`ENOUGH` or :data:`RAISE_EXPOSURE`.
    reason : str
    """
    rule = rule or DecisionRule()
    if not history:
        return CONTINUE, "no update of the grain map yet"
    q = history[-1]
    poor = []
    if q.completeness_median < rule.min_completeness:
        poor.append(f"median completeness {q.completeness_median:.2f} < "
                    f"{rule.min_completeness:g}")
    if q.spots_explained < rule.min_explained:
        poor.append(f"{100 * q.spots_explained:.0f} % of the spots explained < "
                    f"{100 * rule.min_explained:.0f} %")
    if q.n_grains == 0:
        poor.append("no grain found")
    weak = (q.exposure and q.advised_exposure
            and q.advised_exposure >= rule.raise_factor * q.exposure)
    if weak and poor:
        return RAISE_EXPOSURE, (f"the monitor advises {q.advised_exposure:.3g} s against "
                                f"{q.exposure:.3g} s and the map is poor: " + "; ".join(poor))
    missing = []
    if q.n_frames < rule.min_frames:
        missing.append(f"{q.n_frames} frames < {rule.min_frames}")
    if q.max_gap > rule.max_gap:
        missing.append(f"ω gap {q.max_gap:.0f}° > {rule.max_gap:g}°")
    recent = history[-rule.stable_updates:]
    if len(history) < rule.stable_updates + 1:
        missing.append(f"{len(history)} updates, {rule.stable_updates + 1} needed to see the "
                       "map settle")
    elif any(h.change > rule.stable_change or h.new_grains or h.lost_grains for h in recent):
        worst = max(h.change for h in recent)
        missing.append(f"the map still changes ({100 * worst:.1f} % of the voxels, "
                       f"{sum(h.new_grains for h in recent)} new and "
                       f"{sum(h.lost_grains for h in recent)} lost grains in the last "
                       f"{len(recent)} updates)")
    missing += poor
    if missing:
        return CONTINUE, "; ".join(missing)
    return ENOUGH, (f"{q.n_grains} grains, median completeness {q.completeness_median:.2f}, "
                    f"{100 * q.spots_explained:.0f} % of the spots explained, "
                    f"{100 * q.change:.1f} % of the voxels changed in the last update")
