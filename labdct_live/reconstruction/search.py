"""Find grains: candidate orientations at seed points, their refinement, and the null test
that sets the acceptance threshold (docs/reconstruction.md, steps 2-3).

A seed is a point of the sample. Its candidate orientations are the fundamental-zone grid
points whose predicted scattering vectors match the segmented ones best (a direction test,
tolerance about a degree, :meth:`ForwardModel.coarse`). Near the rotation axis a grain's
orientation matches its own spots from any point a few grain sizes away, so the best
candidates of one seed are the orientations of the seed's grain *and* of its neighbours; a
refinement at pixel resolution tells them apart: the seed's own grain predicts spots that
land on segmented pixels from the seed itself.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import minimize
from scipy.spatial import cKDTree

from labdct_live.reconstruction.forward import ForwardModel
from labdct_live.reconstruction.orientations import misorientation_deg, perturb, select_distinct

__all__ = ["Candidate", "SearchSettings", "search_seed", "refine", "refine_known",
           "null_threshold", "worker_threads"]


@dataclass(frozen=True)
class SearchSettings:
    """How candidates are found and refined.

    Parameters
    ----------
    grid_resolution : float
        Spacing of the fundamental-zone orientation grid (degrees).
    direction_tol : float
        Largest scattering-vector angle of a direction match (degrees); about the grid's
        largest distance to its nearest point.
    n_candidates : int
        Distinct best grid orientations refined per seed.
    candidate_separation : float
        Least cubic misorientation between two candidates of one seed (degrees).
    tol_px : float
        A predicted spot hits when it lands within this distance (px) of a segmented pixel;
        below 1 it must land on one (its rounded pixel is segmented).
    coarse_frames : int or None
        Frames used by the direction test (evenly spread); all when None.
    position_range : float
        How far (mm) the refinement may move the point from the seed.
    max_iter : int
        Simplex iterations per refinement stage.
    n_refine : int
        Candidates per seed refined (the best distinct ones of the direction test).
    refine_frames : int or None
        Frames (evenly spread) of the refinement's local grid and first three simplexes;
        the last simplex, which also moves the point, uses all frames.
    index : {"auto", "spots", "grid"}
        Where the candidates come from: pairs of populated spot directions seen from the
        seed (:mod:`.spotindex`), or the direction test of every fundamental-zone grid
        point (saturates on crowded frames: on the full D35 a random orientation matches
        98 % of its spots within ``direction_tol``). ``"auto"``: spots when the ω step is
        at most ``auto_step`` (each reflection is then recorded on several frames, so its
        direction gathers a peak) or more than ``auto_fill`` of the polar maps lies within
        ``direction_tol`` of a segmented direction; else the grid.
    auto_fill, auto_step : float
        See ``index``.
    spot_tol : float
        Angular radius (degrees) of a populated direction (``index="spots"``).
    max_peaks : int
        Populated directions paired per seed (``index="spots"``).
    n_ranked : int
        Distinct spot-pair candidates ranked by the smooth pixel score before the
        ``n_refine`` best are refined (``index="spots"``).
    enough : float or None
        The spot-pair candidates are refined best first, one per core at a time, until one
        reaches this completeness (None: all ``n_refine``). The seed's own grain nearly
        always ranks first; its neighbours, found from their own seeds, cost a refinement
        each.
    """

    grid_resolution: float = 3.0
    direction_tol: float = 1.5
    n_candidates: int = 8
    candidate_separation: float = 3.0
    tol_px: float = 0.5
    coarse_frames: int | None = 60
    position_range: float = 0.005
    max_iter: int = 120
    n_refine: int = 8
    refine_frames: int | None = 60
    index: str = "auto"
    auto_fill: float = 0.3
    auto_step: float = 4.0
    spot_tol: float = 0.25
    max_peaks: int = 150
    n_ranked: int = 32
    enough: float | None = 0.9


@dataclass(frozen=True)
class Candidate:
    """A refined orientation at a point, with its forward-model completeness."""

    orientation: np.ndarray  #: U (3, 3), crystal -> sample
    position: np.ndarray  #: (x, y, z) mm, sample frame
    completeness: float  #: hits / predicted spots at ``tol_px``
    n_pred: int  #: predicted spots (all frames)
    n_hit: int  #: predicted spots that land on a segmented pixel
    coarse_score: float  #: direction-match fraction of the grid orientation it came from


def worker_threads() -> int:
    """Threads for independent refinements: numba's thread count (the cores it uses)."""
    try:
        import numba

        return int(numba.get_num_threads())
    except (ImportError, AttributeError):  # pragma: no cover - numba is a dependency
        return os.cpu_count() or 1


def pixels_per_degree(model: ForwardModel) -> float:
    """Detector displacement (px) of a spot when its scattering vector turns by 1° radially:
    the diffracted ray turns by 2°, seen from the sample at ``lsd``."""
    g = model.scan.geometry
    return 2.0 * g.lsd * np.radians(1.0) / g.pixel_size


def _frames_subset(model: ForwardModel, n: int | None) -> np.ndarray | None:
    total = model.scan.n_frames
    if n is None or n >= total:
        return None
    return np.unique(np.linspace(0, total - 1, n).round().astype(np.int64))


def refine(model: ForwardModel, u0: np.ndarray, p0: np.ndarray, settings: SearchSettings,
           *, coarse_score: float = float("nan"), full: bool = True) -> Candidate:
    """Refine an orientation (and the point) by the smooth forward-model score.

    A local grid of ±half the grid spacing about ``u0`` first, then bounded Nelder-Mead
    simplexes with a shrinking smoothing width σ (px), the last one also moving the point
    within ``position_range``. The objective is the mean over predicted spots of
    ``exp(-d²/2σ²)``, d the distance (px) of the predicted spot to the nearest segmented
    pixel, so the score still guides the simplex when spots miss by many pixels.

    Parameters
    ----------
    model : ForwardModel
    u0 : ndarray, shape (3, 3)
    p0 : ndarray, shape (3,)
    settings : SearchSettings
    coarse_score : float
        Carried into the result.
    full : bool
        False: only the local grid (a quick ranking).

    Returns
    -------
    Candidate
    """
    p0 = np.asarray(p0, float)
    h = settings.grid_resolution / 2.0
    px_deg = pixels_per_degree(model)
    sigma0 = float(np.clip(px_deg * h * 0.7, 2.0, 40.0))

    # The broad first stages judge on a subset of the frames; the last one on all of them.
    subset = _frames_subset(model, settings.refine_frames)

    def objective(x, sigma, with_position):
        u = perturb(u0, x[:3])
        p = p0 + (x[3:] if with_position else 0.0)
        s = model.score(p, u, tol_px=settings.tol_px, sigma_px=sigma,
                        frames=None if with_position else subset)
        n = int(s.n_pred[0])
        return -float(s.soft[0]) / n if n else 0.0

    steps = np.array([-h, 0.0, h])
    grid = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)
    values = [objective(d, sigma0, False) for d in grid]
    x = np.concatenate([grid[int(np.argmin(values))], np.zeros(3)])
    if full:
        sigma = sigma0
        rot_bounds = [(-settings.grid_resolution, settings.grid_resolution)] * 3
        pos_bounds = [(-settings.position_range, settings.position_range)] * 3
        step = h / 2.0
        for stage in range(4):
            with_position = stage == 3
            dim = 6 if with_position else 3
            simplex = np.tile(x[:dim], (dim + 1, 1))
            for i in range(dim):
                simplex[i + 1, i] += step if i < 3 else settings.position_range / 4
            res = minimize(objective, x[:dim], args=(sigma, with_position), method="Nelder-Mead",
                           bounds=(rot_bounds + pos_bounds)[:dim],
                           options={"initial_simplex": simplex, "maxiter": settings.max_iter,
                                    "xatol": 1e-3, "fatol": 1e-4})
            x[:dim] = res.x
            sigma = max(sigma / 3.0, max(settings.tol_px, 0.7))
            step = max(step / 3.0, 0.02)
    u = perturb(u0, x[:3])
    p = p0 + x[3:]
    s = model.score(p, u, tol_px=settings.tol_px)
    return Candidate(u, p, float(s.completeness[0]), int(s.n_pred[0]), int(s.n_hit[0]),
                     float(coarse_score))


def search_seed(model: ForwardModel, seed: np.ndarray, grid: np.ndarray,
                settings: SearchSettings, *, min_quick: float = 0.0,
                known: np.ndarray | None = None, exclude: np.ndarray | None = None
                ) -> tuple[list[Candidate], int]:
    """Refined candidate orientations at one seed point, best first.

    The direction test ranks the grid; the ``n_refine`` best distinct orientations are
    refined (:func:`refine`) and kept when they reach ``min_quick`` completeness.

    Parameters
    ----------
    model : ForwardModel
    seed : ndarray, shape (3,)
        Sample-frame position (mm).
    grid : ndarray, shape (O, 3, 3)
        Fundamental-zone orientation grid.
    settings : SearchSettings
    min_quick : float
        Least refined completeness of a returned candidate.
    known : ndarray, shape (K, 3, 3), optional
        Orientations already found near the seed: candidates within
        ``candidate_separation`` of one are not refined again, so the refinement slots go
        to new orientations.
    exclude : ndarray of bool, optional
        Spots the spot-pair indexing leaves out (explained by grains already found,
        :class:`.spotindex.SpotLedger`); the grid search ignores it.

    Returns
    -------
    candidates : list of Candidate
        Fully refined candidates, by decreasing completeness (empty when no grid
        orientation predicts spots here).
    n_tests : int
        Seed-orientation tests made by the direction search (orientations x frames).
    """
    if index_method(model, settings) == "spots":
        return _search_spots(model, seed, settings, min_quick=min_quick, known=known,
                             exclude=exclude)
    frames = _frames_subset(model, settings.coarse_frames)
    n_pred, n_match = model.coarse(seed, grid, tol_deg=settings.direction_tol, frames=frames,
                                   abort_after=16, abort_frac=0.45)
    n_frames = model.scan.n_frames if frames is None else len(frames)
    n_tests = len(grid) * n_frames
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(n_pred >= 10, n_match / np.maximum(n_pred, 1), 0.0)
    if not np.any(frac > 0):
        return [], n_tests
    order = np.argsort(-frac, kind="stable")[: 40 * settings.n_candidates]
    if known is not None and len(known):
        near_known = misorientation_deg(grid[order][:, None], known[None]).min(axis=1)
        order = order[near_known >= settings.candidate_separation]
    chosen = select_distinct(grid, order, settings.n_candidates, settings.candidate_separation)
    # The local grid alone says little (the spots move by many pixels per degree): every
    # candidate gets the full refinement, which lands on the orientation of a real grain.
    # The simplexes are independent and the kernel releases the GIL: one thread per core.
    chosen = chosen[: settings.n_refine]
    with ThreadPoolExecutor(max_workers=max(1, min(len(chosen), worker_threads()))) as pool:
        full = list(pool.map(
            lambda i: refine(model, grid[i], seed, settings, coarse_score=frac[i]), chosen))
    full = [c for c in full if c.completeness >= min_quick]
    return sorted(full, key=lambda c: -c.completeness), n_tests


def index_method(model: ForwardModel, settings: SearchSettings) -> str:
    """``settings.index``, with ``"auto"`` resolved on the scan's ω step and polar maps."""
    if settings.index in ("spots", "grid"):
        return settings.index
    if settings.index != "auto":
        raise ValueError(f"index must be 'auto', 'spots' or 'grid', got {settings.index!r}")
    if model.maps.spots is None:
        return "grid"
    omegas = model.scan.omegas
    fine = len(omegas) > 1 and np.median(np.abs(np.diff(omegas))) <= settings.auto_step
    crowded = model.polar_fill(settings.direction_tol) > settings.auto_fill
    return "spots" if fine or crowded else "grid"


def _refine_all(model: ForwardModel, starts: np.ndarray, seed: np.ndarray,
                settings: SearchSettings, scores: np.ndarray) -> list[Candidate]:
    """Refine the start orientations, best first, a batch of one per core at a time (the
    simplexes are independent and the kernel releases the GIL), until one reaches
    ``settings.enough``."""
    workers = max(1, min(len(starts), worker_threads()))
    done: list[Candidate] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for first in range(0, len(starts), workers):
            batch = range(first, min(first + workers, len(starts)))
            done += pool.map(
                lambda k: refine(model, starts[k], seed, settings, coarse_score=scores[k]),
                batch)
            if settings.enough is not None and max(c.completeness for c in done) >= \
                    settings.enough:
                break
    return done


def _search_spots(model: ForwardModel, seed: np.ndarray, settings: SearchSettings, *,
                  min_quick: float, known: np.ndarray | None,
                  exclude: np.ndarray | None = None) -> tuple[list[Candidate], int]:
    """:func:`search_seed` with spot-pair candidates (:func:`.spotindex.spot_candidates`)."""
    from labdct_live.reconstruction.spotindex import spot_candidates

    mats, votes = spot_candidates(model, seed, tol_deg=settings.spot_tol,
                                  max_peaks=settings.max_peaks, exclude=exclude)
    n_tests = len(mats)
    if len(mats) == 0:
        return [], n_tests
    order = np.arange(min(len(mats), 40 * settings.n_ranked))
    if known is not None and len(known):
        near_known = misorientation_deg(mats[order][:, None], known[None]).min(axis=1)
        order = order[near_known >= settings.candidate_separation]
    chosen = np.asarray(select_distinct(mats, order, settings.n_ranked,
                                        settings.candidate_separation), dtype=np.int64)
    if chosen.size == 0:
        return [], n_tests
    # The spot-pair orientations are within a few tenths of a degree: rank them by the
    # smooth pixel score at that scale, then refine the best with a matching local grid.
    fine = replace(settings, grid_resolution=2.0 * settings.spot_tol)
    sigma = float(np.clip(pixels_per_degree(model) * settings.spot_tol, 2.0, 40.0))
    s = model.score(np.broadcast_to(seed, (chosen.size, 3)), mats[chosen], sigma_px=sigma)
    soft = s.soft / np.maximum(s.n_pred, 1)
    best = chosen[np.argsort(-soft, kind="stable")[: settings.n_refine]]
    full = _refine_all(model, mats[best], seed, fine, votes[best].astype(float))
    full = [c for c in full if c.completeness >= min_quick]
    return sorted(full, key=lambda c: -c.completeness), n_tests


def null_threshold(model: ForwardModel, seeds: np.ndarray, grid: np.ndarray,
                   settings: SearchSettings, rng: np.random.Generator, *,
                   margin_sd: float = 4.0) -> tuple[float, np.ndarray]:
    """Acceptance threshold from an ω-scrambled null test.

    Each seed is searched exactly as in the reconstruction, but against the frames at the
    wrong rotation angles (a random derangement of the frame order), where no orientation
    is right. The threshold is the best null completeness plus ``margin_sd`` binomial
    standard deviations of it (for the number of spots it predicted).

    Returns
    -------
    threshold : float
    null : ndarray
        Best refined completeness of each null seed.
    """
    scrambled = model.scrambled(rng)
    values, n_pred = [], []
    for seed in seeds:
        cands, _ = search_seed(scrambled, seed, grid, settings)
        if cands:
            values.append(cands[0].completeness)
            n_pred.append(max(cands[0].n_pred, 1))
    if not values:
        return 0.5, np.zeros(0)
    values_arr = np.asarray(values)
    k = int(np.argmax(values_arr))
    c = values_arr[k]
    sd = np.sqrt(max(c * (1 - c), 0.01) / n_pred[k])
    return float(min(0.95, c + margin_sd * sd)), values_arr


def refine_known(model: ForwardModel, prior: tuple[np.ndarray, np.ndarray],
                 points: np.ndarray, settings: SearchSettings, threshold: float
                 ) -> list[Candidate]:
    """Grains found earlier (``prior``: orientations, centres), each refined on ``model``'s
    frames from the mask point nearest its centre; those reaching ``threshold`` (one
    refinement per core at a time)."""
    mats = np.asarray(prior[0], float).reshape(-1, 3, 3)
    centres = np.asarray(prior[1], float).reshape(-1, 3)
    _, nearest = cKDTree(points).query(centres)
    starts = points[nearest]
    with ThreadPoolExecutor(max_workers=max(1, min(len(mats), worker_threads()))) as pool:
        refined = list(pool.map(lambda k: refine(model, mats[k], starts[k], settings),
                                range(len(mats))))
    return [c for c in refined if c.completeness >= threshold]
