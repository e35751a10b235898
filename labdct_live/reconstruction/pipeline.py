"""Reconstruct a grain map from binary frames: the steps of docs/reconstruction.md in order."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from labdct_live.grains.grainmap import GrainMap
from labdct_live.reconstruction.assign import (
    assign_coarse_to_fine,
    assign_voxels,
    drop_small_grains,
    merge_grains,
    poor_region_seeds,
)
from labdct_live.reconstruction.data import ReconstructionError, ScanData
from labdct_live.reconstruction.forward import ForwardModel
from labdct_live.reconstruction.orientations import fundamental_zone_grid, misorientation_deg
from labdct_live.reconstruction.search import (
    SearchSettings,
    index_method,
    null_threshold,
    refine_known,
    search_seed,
)
from labdct_live.reconstruction.spotindex import SpotLedger
from labdct_live.reconstruction.table import GRAIN_COLUMNS, grain_table

__all__ = ["LowCompletenessWarning", "ReconstructionCancelled", "ReconstructionOptions",
           "ReconstructionResult", "reconstruct", "GRAIN_COLUMNS"]

logger = logging.getLogger(__name__)

class ReconstructionCancelled(Exception):
    """:func:`reconstruct` stopped because its ``cancel`` callable said so."""


class LowCompletenessWarning(UserWarning):
    """The reconstructed grains explain few of their predicted spots: the geometry, the ω
    or the segmentation is probably wrong."""


@dataclass(frozen=True)
class ReconstructionOptions:
    """Settings of :func:`reconstruct`.

    Parameters
    ----------
    voxel_size : float or None
        Edge of the output voxels (mm); the scan's (``scan.extra["voxel_size"]``) or 5 µm.
    grain_size : float or None
        Expected mean grain diameter (mm), which sets the seed spacing and the search
        radius; from the scan's metadata when known, else 30 µm.
    seed_spacing : float or None
        Distance between seed points (mm); half the grain size when None.
    threshold : float or None
        Least completeness of a grain; from the ω-scrambled null test when None.
    n_null : int
        Seeds searched in the null test.
    search : SearchSettings
        Orientation search and refinement settings.
    tie : float
        Completeness difference below which two grains fit a voxel equally well; a tie goes
        to the nearest grain centre.
    merge_angle : float
        Face-neighbouring grains closer than this (degrees) are merged.
    min_grain_voxels : int or None
        Grains with fewer voxels are dropped; a twentieth of the expected grain volume
        (at least 4 voxels) when None.
    reseed : int
        Extra seeds per re-seeding round, placed in regions of poorly explained voxels.
    far_seed : float
        Re-seeding also searches the seed points farther than this many grain sizes from
        the centre of the grain they were assigned to.
    skip_explained : bool
        Skip seeds that an accepted grain already explains as well as its own seed (faster;
        may miss a grain whose neighbour fits its voxels equally well).
    coarse_step : int
        Voxel assignment first assigns a lattice of this many voxels, then tests every
        voxel only against the grains of the lattice voxels around it; 1 tests every voxel
        against every grain within the search radius (slower, same map in the tests).
    claim_level : float or None
        Only grains at least this complete at their seed claim seeds (``skip_explained``)
        and are kept unconditionally; a weaker grain (the orientation of a grain farther
        away often reaches 0.2-0.4 at a seed) is kept only when it reaches
        ``accept_fraction`` of the strong grains' median completeness. Halfway between the
        threshold and 1 when None.
    accept_fraction : float
        See ``claim_level``.
    claim_radius : float
        A strong grain claims only seeds within this many grain sizes of the seed where it
        was found: farther seeds are often in a neighbour that it fits as well (Laue
        focusing), and that neighbour would go unsearched.
    low_completeness : float
        A warning is issued when the grains' median completeness is below this.
    max_fill : float or None
        Largest share of segmented pixels (over all frames) a scan may have: beyond it
        nearly every predicted spot hits, so completeness says nothing and the search
        stalls (the routine's default masks of the real iron frames cover 26 %); the
        reconstruction refuses such a scan at once. None: no check.
    seed : int
        Random seed (seed order, null test).
    """

    voxel_size: float | None = None
    grain_size: float | None = None
    seed_spacing: float | None = None
    threshold: float | None = None
    n_null: int = 3
    search: SearchSettings = field(default_factory=SearchSettings)
    tie: float = 0.02
    merge_angle: float = 0.5
    min_grain_voxels: int | None = None
    reseed: int = 20
    far_seed: float = 0.7
    skip_explained: bool = True
    coarse_step: int = 2
    claim_level: float | None = None
    claim_radius: float = 1.0
    accept_fraction: float = 0.5
    low_completeness: float = 0.75
    max_fill: float | None = 0.15
    seed: int = 0

    def to_dict(self) -> dict:
        """Plain-python description (for the output's metadata)."""
        return asdict(self)


@dataclass
class ReconstructionResult:
    """What :func:`reconstruct` found.

    Attributes
    ----------
    grainmap : GrainMap
        The grain map (per-voxel completeness, sample mask).
    grains : pandas.DataFrame
        One row per grain (:data:`GRAIN_COLUMNS`): centroid (mm), voxels, volume (mm³),
        equivalent diameter (mm), Bunge angles (degrees), completeness at the centroid,
        mean completeness of its voxels, spots predicted and matched at the centroid.
    threshold : float
        Acceptance threshold used.
    null_completeness : ndarray
        Best completeness of each null-test seed.
    stats : dict
        Counts and timings (seconds) of the stages.
    """

    grainmap: GrainMap
    grains: pd.DataFrame
    threshold: float
    null_completeness: np.ndarray
    stats: dict


def _grain_size(scan: ScanData, options: ReconstructionOptions) -> float:
    if options.grain_size is not None:
        return float(options.grain_size)
    n = scan.extra.get("n_grains")
    if n:
        env = scan.envelope
        volume = np.pi * (env.diameter / 2) ** 2 * env.height
        return float((6 * volume / (np.pi * n)) ** (1 / 3))
    return 0.030


def _seed_indices(ijk: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
    """Voxels on a lattice of ``step`` voxels (offset to the middle), in random order."""
    offset = step // 2
    on = np.all((ijk - offset) % step == 0, axis=1)
    idx = np.flatnonzero(on)
    if idx.size == 0:
        idx = np.arange(len(ijk))
    return rng.permutation(idx)


class _Grains:
    """The growing list of accepted grains."""

    def __init__(self) -> None:
        self.orientations: list[np.ndarray] = []
        self.centres: list[np.ndarray] = []
        self.completeness: list[float] = []

    def __len__(self) -> int:
        return len(self.orientations)

    def duplicate(self, u: np.ndarray, centre: np.ndarray, radius: float, angle: float) -> bool:
        if not self.orientations:
            return False
        mis = misorientation_deg(np.array(self.orientations), u)
        dist = np.linalg.norm(np.array(self.centres) - centre, axis=1)
        return bool(np.any((mis < angle) & (dist < radius)))

    def add(self, u: np.ndarray, centre: np.ndarray, completeness: float) -> None:
        self.orientations.append(np.asarray(u, float))
        self.centres.append(np.asarray(centre, float))
        self.completeness.append(float(completeness))

    def keep(self, which: np.ndarray) -> None:
        """Keep only the grains where ``which`` is true."""
        self.orientations = [u for u, k in zip(self.orientations, which) if k]
        self.centres = [c for c, k in zip(self.centres, which) if k]
        self.completeness = [c for c, k in zip(self.completeness, which) if k]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.array(self.orientations).reshape(-1, 3, 3),
                np.array(self.centres).reshape(-1, 3))


def reconstruct(scan: ScanData, options: ReconstructionOptions | None = None, *,
                progress: bool = False, model: ForwardModel | None = None,
                prior: tuple[np.ndarray, np.ndarray] | None = None,
                threshold: float | None = None,
                cancel: Callable[[], bool] | None = None) -> ReconstructionResult:
    """Reconstruct the grain map of a scan by forward-model indexing.

    Parameters
    ----------
    scan : ScanData
        Binary frames, ω, geometry, material and sample envelope.
    options : ReconstructionOptions, optional
    progress : bool
        Show progress bars (tqdm).
    model : ForwardModel, optional
        A forward model of ``scan`` built earlier (its distance maps are reused).
    prior : (ndarray (G, 3, 3), ndarray (G, 3)), optional
        Orientations and centres (mm) of grains found earlier, e.g. by the previous update
        of a live grain map on fewer frames: each is refined on this scan's frames first and
        kept when it passes the acceptance threshold, claiming the seeds it explains, so
        that only the rest of the sample is searched.
    threshold : float, optional
        Acceptance threshold to use instead of ``options.threshold`` or the null test (a
        live map keeps the one of its first update).
    cancel : callable, optional
        Checked between seeds: when it returns True the reconstruction stops with
        :class:`ReconstructionCancelled` (a live map's update at the end of the scan).

    Returns
    -------
    ReconstructionResult

    Warns
    -----
    LowCompletenessWarning
        When no grain is found or the grains' median completeness is below
        ``options.low_completeness``.
    """
    from tqdm.auto import tqdm

    options = options or ReconstructionOptions()
    settings = options.search
    rng = np.random.default_rng(options.seed)
    stats: dict = {}
    t0 = time.perf_counter()
    if options.max_fill is not None:
        fill = float(np.mean(scan.frames))
        if fill > options.max_fill:
            raise ReconstructionError(
                f"{100 * fill:.0f} % of the pixels of {scan.source or 'the scan'} are segmented "
                f"(at most {100 * options.max_fill:.0f} %): almost any predicted spot would "
                "hit, so the grains cannot be told apart; segment with a higher threshold or "
                "a larger minimum spot size (or set ReconstructionOptions(max_fill=None))")
    model = model or ForwardModel.from_scan(scan, progress=progress)
    stats["time_maps"] = time.perf_counter() - t0

    voxel = float(options.voxel_size or scan.extra.get("voxel_size") or 0.005)
    grain_size = _grain_size(scan, options)
    shape, origin, mask = scan.envelope.grid(voxel)
    kk, jj, ii = np.nonzero(mask)
    if kk.size == 0:
        raise ReconstructionError("the sample mask holds no voxel")
    ijk = np.stack([ii, jj, kk], axis=1)
    points = origin + ijk * voxel
    spacing = float(options.seed_spacing or grain_size / 2)
    step = max(1, int(round(spacing / voxel)))
    seeds = _seed_indices(ijk, step, rng)
    radius = 1.5 * grain_size
    claim_radius = options.claim_radius * grain_size
    t_grid = time.perf_counter()
    grid = fundamental_zone_grid(settings.grid_resolution, scan.material.space_group)
    stats["time_grid"] = time.perf_counter() - t_grid
    stats.update(n_voxels=int(len(points)), n_seed_points=int(len(seeds)),
                 grid_size=int(len(grid)), voxel_size=voxel, grain_size=grain_size)

    t1 = time.perf_counter()
    if threshold is not None:
        threshold, null = float(threshold), np.zeros(0)
    elif options.threshold is None:
        null_seeds = points[seeds[: options.n_null]]
        threshold, null = null_threshold(model, null_seeds, grid, settings, rng)
    else:
        threshold, null = float(options.threshold), np.zeros(0)
    stats["time_null"] = time.perf_counter() - t1
    logger.info("acceptance threshold %.3f (null: %s)", threshold, np.round(null, 3))

    grains = _Grains()
    claim_level = (threshold + 0.5 * (1.0 - threshold) if options.claim_level is None
                   else max(threshold, float(options.claim_level)))

    def accept_level() -> float:
        strong = [c for c in grains.completeness if c >= claim_level]
        if len(strong) < 3:
            return threshold
        return max(threshold, options.accept_fraction * float(np.median(strong)))

    claimed = np.zeros(len(points), dtype=bool)
    searched = np.zeros(len(points), dtype=bool)
    # The spots of strong grains leave the spot-pair indexing of later seeds.
    ledger = SpotLedger(model) if index_method(model, settings) == "spots" else None
    seed_tree = cKDTree(points[seeds])
    n_coarse_tests = 0
    n_searched = 0
    t2 = time.perf_counter()

    search_clock = [0.0]

    def search_at(index: int) -> None:
        nonlocal n_coarse_tests, n_searched
        if cancel is not None and cancel():
            raise ReconstructionCancelled("reconstruction cancelled")
        started = time.perf_counter()
        known = None
        if len(grains):
            mats, centres = grains.arrays()
            near = np.linalg.norm(centres - points[index], axis=1) < 3 * radius
            known = mats[near]
        cands, n_tests = search_seed(model, points[index], grid, settings,
                                     min_quick=0.5 * threshold, known=known,
                                     exclude=None if ledger is None else ledger.explained)
        n_coarse_tests += n_tests
        n_searched += 1
        searched[index] = True
        for cand in cands:
            if cand.completeness < accept_level():
                continue
            near = seeds[seed_tree.query_ball_point(cand.position, r=radius)]
            s = model.score(points[near], cand.orientation, tol_px=settings.tol_px)
            add_grain(cand, near, s)
        claimed[index] = True
        search_clock[0] += time.perf_counter() - started

    def add_grain(cand, near: np.ndarray, s) -> None:
        """Accept ``cand``; a strong grain claims the seeds it explains and its spots."""
        ok = near[s.completeness >= threshold]
        centre = points[ok].mean(axis=0) if ok.size else cand.position
        if grains.duplicate(cand.orientation, centre, 2 * radius, 1.0):
            return
        grains.add(cand.orientation, centre, cand.completeness)
        # Seeds this grain explains as well as its own seed need no search.
        level = max(threshold, cand.completeness - 0.05)
        if cand.completeness >= claim_level:
            if options.skip_explained:
                close = np.linalg.norm(points[near] - cand.position, axis=1) <= claim_radius
                claimed[near[(s.completeness >= level) & close]] = True
            if ledger is not None:
                ledger.explain(model, centre, cand.orientation, settings.tol_px)

    if prior is not None and len(prior[0]):
        t_prior = time.perf_counter()
        kept = refine_known(model, prior, points, settings, threshold)
        for cand in sorted(kept, key=lambda c: -c.completeness):
            near = seeds[seed_tree.query_ball_point(cand.position, r=radius)]
            s = model.score(points[near], cand.orientation, tol_px=settings.tol_px)
            add_grain(cand, near, s)
        stats.update(n_prior=int(len(prior[0])), n_prior_kept=len(grains),
                     time_prior=time.perf_counter() - t_prior)

    for index in tqdm(seeds, desc="search seeds", unit="seed", disable=not progress):
        if not claimed[index]:
            search_at(int(index))
    # Weak grains accepted before the strong ones set the level.
    grains.keep(np.asarray(grains.completeness) >= accept_level())
    stats["time_search"] = time.perf_counter() - t2
    logger.info("search: %d seeds searched, %d grains, %.1f s", n_searched, len(grains),
                stats["time_search"])

    t3 = time.perf_counter()
    n_assign_tests = 0

    def assign(n_iter: int = 2):
        nonlocal n_assign_tests
        mats, centres = grains.arrays()
        result = None
        for _ in range(n_iter):
            # the second pass only tests the grains next to each voxel in the first
            previous = None if result is None or options.coarse_step <= 1 else result.grain
            result = assign_coarse_to_fine(
                model, points, ijk, mats, centres, previous=previous,
                step=options.coarse_step, radius=radius, threshold=threshold,
                tol_px=settings.tol_px, tie=options.tie,
                abort_level=float(np.median(grains.completeness)))
            n_assign_tests += result.n_tests
            logger.info("assignment of %d voxels to %d grains: %d tests, %.1f s since start",
                        len(points), len(mats), result.n_tests, time.perf_counter() - t0)
            own = result.grain >= 0
            counts = np.bincount(result.grain[own], minlength=len(mats))
            for axis in range(3):
                sums = np.bincount(result.grain[own], weights=points[own, axis],
                                   minlength=len(mats))
                centres[:, axis] = np.where(counts > 0, sums / np.maximum(counts, 1),
                                            centres[:, axis])
        grains.centres = list(centres)
        return result

    result = assign()
    # Re-seed regions of poorly explained voxels (twice at most): one seed per region of at
    # least min_vox voxels, at its most interior voxel.
    expected = np.pi / 6 * grain_size**3 / voxel**3
    min_vox = options.min_grain_voxels or max(4, int(0.05 * expected))
    for _ in range(2 if options.reseed else 0):
        if not len(grains):
            break
        level = max(threshold, 0.9 * float(np.median(grains.completeness)))
        new_seeds = poor_region_seeds(result.completeness < level, (kk, jj, ii), shape, min_vox,
                                  options.reseed)
        # Seeds far from the centre of the grain that took them: a grain whose neighbours
        # fit its voxels as well as it does (Laue focusing) leaves such a gap.
        mats_now, centres_now = grains.arrays()
        owner = result.grain[seeds]
        far = np.linalg.norm(points[seeds] - centres_now[np.maximum(owner, 0)], axis=1)
        far_seeds = seeds[(owner >= 0) & (far > options.far_seed * grain_size)]
        far_seeds = far_seeds[~searched[far_seeds]]
        new_seeds = np.unique(np.concatenate([new_seeds, far_seeds]))
        new_seeds = new_seeds[~searched[new_seeds]]
        if new_seeds.size == 0:
            break
        before = len(grains)
        logger.info("re-seeding at %d seeds", len(new_seeds))
        for index in new_seeds:
            search_at(int(index))
        if len(grains) == before:
            break
        result = assign()
    # re-seeding searches are counted as search, not as assignment
    reseed_search = search_clock[0] - stats["time_search"]
    stats["time_assign"] = time.perf_counter() - t3 - reseed_search
    stats["time_search"] = search_clock[0]

    t4 = time.perf_counter()
    mats, centres = grains.arrays()
    labels = np.zeros(shape, dtype=np.int64)
    comp_volume = np.zeros(shape, dtype=np.float32)
    if len(grains):
        labels[kk, jj, ii] = result.grain + 1
        comp_volume[kk, jj, ii] = result.completeness
        labels, _ = merge_grains(labels, mats, options.merge_angle)
        labels, _ = drop_small_grains(labels, min_vox)
        # Voxels of dropped grains go to the best surviving grain.
        present = np.unique(labels[labels > 0]) - 1
        orphan = (labels[kk, jj, ii] == 0) & (result.grain >= 0)
        if orphan.any() and present.size:
            again = assign_voxels(model, points[orphan], mats[present], centres[present],
                                  radius=radius, threshold=threshold, tol_px=settings.tol_px,
                                  tie=options.tie)
            n_assign_tests += again.n_tests
            new = np.where(again.grain >= 0, present[np.maximum(again.grain, 0)] + 1, 0)
            labels[kk[orphan], jj[orphan], ii[orphan]] = new
            comp_volume[kk[orphan], jj[orphan], ii[orphan]] = again.completeness
    # consecutive ids 1..n
    present = np.unique(labels[labels > 0])
    relabel = np.zeros(len(mats) + 2, dtype=np.int64)
    relabel[present] = np.arange(1, len(present) + 1)
    ids = relabel[labels].astype(np.int32)
    orientations = np.concatenate([np.eye(3)[None], mats[present - 1]]) if present.size else \
        np.eye(3)[None]
    table = grain_table(model, ids, orientations, comp_volume, origin, voxel,
                         settings.tol_px)
    stats["time_finish"] = time.perf_counter() - t4
    stats.update(n_searched_seeds=n_searched, n_candidate_grains=len(grains),
                 n_grains=int(len(present)), coarse_tests=int(n_coarse_tests),
                 assign_tests=int(n_assign_tests), time_total=time.perf_counter() - t0)
    stats["threshold"] = threshold

    grainmap = GrainMap.from_grain_ids(
        ids, voxel, orientations, phase_ids=1, phases=[scan.material.phase],
        center=(0.0, 0.0, 0.0), completeness=comp_volume, mask=mask.astype(np.uint8))
    grainmap.metadata.update(source=scan.source, threshold=threshold,
                             options=options.to_dict())
    median = float(table["completeness"].median()) if len(table) else 0.0
    stats["median_completeness"] = median
    if len(table) == 0 or median < options.low_completeness:
        warnings.warn(
            f"low completeness: {len(table)} grains, median completeness {median:.2f} "
            f"(threshold {threshold:.2f}); the geometry, the rotation angles or the "
            "segmentation are probably wrong", LowCompletenessWarning, stacklevel=2)
    return ReconstructionResult(grainmap, table, threshold, null, stats)
