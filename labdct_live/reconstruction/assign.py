"""Give every voxel of the sample to a grain, merge twins of one grain, drop tiny grains
(docs/reconstruction.md, step 4).

A voxel tests the grains whose centre lies within a radius and takes the one with the
highest forward-model completeness. Laue focusing makes a spot blind to moves of its source
point along the scattering vector and along the beam, so a voxel close to a boundary can be
fully consistent with two grains: completeness within ``tie`` of the best counts as a tie.
A tie goes to the grain whose centre is nearest (optionally first to the grain whose
predicted spots lie deepest inside the segmented spots).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from labdct_live.reconstruction.forward import ForwardModel
from labdct_live.reconstruction.orientations import misorientation_deg

__all__ = ["Assignment", "assign_voxels", "assign_coarse_to_fine", "merge_grains",
           "drop_small_grains", "grain_adjacency", "neighbour_pairs", "radius_pairs",
           "poor_region_seeds"]


@dataclass
class Assignment:
    """Grain index per voxel (-1 = none) and the completeness of that choice."""

    grain: np.ndarray  #: (V,) int, index into the grain list, -1 = unassigned
    completeness: np.ndarray  #: (V,) float, completeness of the chosen (or best) grain
    n_tests: int  #: voxel-grain pairs tested


def radius_pairs(points: np.ndarray, centres: np.ndarray, radius: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(voxel, grain) pairs of every voxel with every grain whose centre is within
    ``radius`` (mm)."""
    if len(centres) == 0 or len(points) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    neighbours = cKDTree(centres).query_ball_point(points, r=radius)
    counts = np.fromiter((len(n) for n in neighbours), dtype=np.int64, count=len(points))
    vox = np.repeat(np.arange(len(points)), counts)
    grn = np.fromiter((g for n in neighbours for g in n), dtype=np.int64,
                      count=int(counts.sum()))
    return vox, grn


def neighbour_pairs(ijk: np.ndarray, labels: np.ndarray, known: np.ndarray, reach: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(voxel, grain) pairs from the labels of known voxels nearby.

    Every voxel gets the grains (labels >= 0) of the ``known`` voxels within ``reach``
    voxels (per axis). A grain map is made of large regions, so a voxel can only belong to
    a grain that owns a voxel next to it: this replaces the tests of every grain within the
    search radius by the two or three grains around the voxel.

    Parameters
    ----------
    ijk : ndarray of int, shape (V, 3)
        Voxel indices.
    labels : ndarray of int, shape (V,)
        Grain of each voxel (-1 = none); read only where ``known``.
    known : ndarray of bool, shape (V,)
    reach : int

    Returns
    -------
    vox, grn : ndarray of int
        The pairs.
    full : ndarray of bool, shape (V,)
        Voxels that need every grain within the radius instead: an unassigned known voxel
        or no known voxel lies within ``reach``.
    """
    lo = ijk.min(axis=0)
    idx = ijk - lo + reach
    vol = np.full(tuple(idx.max(axis=0) + reach + 1), -2, dtype=np.int32)
    vol[tuple(idx[known].T)] = labels[known]
    steps = np.arange(-reach, reach + 1)
    offsets = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)
    vals = np.empty((len(ijk), len(offsets)), dtype=np.int32)
    for n, off in enumerate(offsets):
        vals[:, n] = vol[tuple((idx + off).T)]
    full = (vals == -1).any(axis=1) | (vals == -2).all(axis=1)
    vals.sort(axis=1)
    keep = vals >= 0
    keep[:, 1:] &= vals[:, 1:] != vals[:, :-1]
    keep[full] = False
    vox, col = np.nonzero(keep)
    return vox.astype(np.int64), vals[vox, col].astype(np.int64), full


def assign_voxels(model: ForwardModel, points: np.ndarray, orientations: np.ndarray,
                  centres: np.ndarray, *, radius: float, threshold: float, tol_px: float,
                  tie: float = 0.02, depth_cap: float = 0.0, abort_level: float | None = None,
                  chunk: int = 200_000, pairs: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> Assignment:
    """Best grain of each voxel among the grains whose centre is within ``radius``.

    Parameters
    ----------
    model : ForwardModel
    points : ndarray, shape (V, 3)
        Voxel centres (mm, sample frame).
    orientations : ndarray, shape (G, 3, 3)
        Orientation U of each grain.
    centres : ndarray, shape (G, 3)
        Current centre estimate of each grain (mm).
    radius : float
        Grains farther than this from a voxel are not tested (mm).
    threshold : float
        Least completeness for a voxel to belong to a grain; below it the voxel stays
        unassigned (-1), with its best completeness recorded.
    tol_px : float
        Hit tolerance (px).
    tie : float
        Completeness difference below which two grains are tied.
    depth_cap : float
        Tied grains are told apart by the mean depth (px, capped at this) of their
        predicted spots inside the segmented spots: spots are wider than the grain's
        projection (blur, segmentation), so a voxel just outside a grain still hits that
        grain's spots, but only at their rim. 0 (default) = nearest centre only: on the
        test scans the depth did not help (docs/reconstruction.md).
    abort_level : float, optional
        A pair is abandoned after 30 predicted spots when fewer than half this fraction hit
        (default: the threshold); the grains' typical completeness is a good value: a grain
        that cannot reach half of it cannot win the voxel.
    chunk : int
        Voxel-grain pairs scored per kernel call.
    pairs : (vox, grn) arrays, optional
        The (voxel, grain) pairs to test (e.g. :func:`neighbour_pairs`); pairs farther than
        ``radius`` are dropped. Default: :func:`radius_pairs`.

    Returns
    -------
    Assignment
    """
    n_vox = len(points)
    abort_level = threshold if abort_level is None else max(abort_level, threshold)
    grain = np.full(n_vox, -1, dtype=np.int64)
    best = np.zeros(n_vox)
    if len(orientations) == 0 or n_vox == 0:
        return Assignment(grain, best, 0)
    if pairs is None:
        vox, grn = radius_pairs(points, centres, radius)
    else:
        vox, grn = (np.asarray(a, np.int64) for a in pairs)
    dist = np.linalg.norm(points[vox] - centres[grn], axis=1)
    if pairs is not None:
        near = dist <= radius
        vox, grn, dist = vox[near], grn[near], dist[near]
    if len(vox) == 0:
        return Assignment(grain, best, 0)
    # Pairs of one grain in a row: neighbouring voxels of a grain read the same pixels of
    # the distance maps, which then stay in the CPU cache.
    by_grain = np.lexsort((vox, grn))
    comp = np.zeros(len(vox))
    depth = np.zeros(len(vox))
    for start in range(0, len(vox), chunk):
        sl = by_grain[start:start + chunk]
        # Hopeless pairs stop early: below half the abort level after 30 predictions.
        if depth_cap > 0:
            s = model.score(points[vox[sl]], orientations[grn[sl]], tol_px=tol_px,
                            depth_cap_px=depth_cap, abort_after=30,
                            abort_frac=0.5 * abort_level)
            depth[sl] = s.mean_depth
        else:
            s = model.score_grains(points[vox[sl]], grn[sl], orientations, centres,
                                   radius * 1.05, tol_px=tol_px, abort_after=30,
                                   abort_frac=0.5 * abort_level)
        comp[sl] = s.completeness
    np.maximum.at(best, vox, comp)
    # Among pairs within `tie` of their voxel's best: the deepest spots (rounded to 0.1 px),
    # then the nearest centre.
    tied = comp >= best[vox] - tie
    key_depth = np.where(tied, -np.round(depth, 1), np.inf)
    key = np.where(tied, dist, np.inf)
    order = np.lexsort((key, key_depth, vox))
    first = np.ones(len(order), dtype=bool)
    first[1:] = vox[order][1:] != vox[order][:-1]
    pick = order[first]
    grain[vox[pick]] = grn[pick]
    grain[best < threshold] = -1
    return Assignment(grain, best, int(len(vox)))


def assign_coarse_to_fine(model: ForwardModel, points: np.ndarray, ijk: np.ndarray,
                          orientations: np.ndarray, centres: np.ndarray, *,
                          previous: np.ndarray | None = None, step: int = 2,
                          **kwargs) -> Assignment:
    """:func:`assign_voxels` that tests each voxel only against the grains around it.

    Without ``previous``, the voxels on a lattice of ``step`` voxels are assigned first
    (every grain within the radius); every voxel then tests the grains of the lattice
    voxels within ``step`` of it (:func:`neighbour_pairs`). With ``previous`` (an
    assignment of the same voxels), every voxel tests the grains of its face, edge and
    corner neighbours in it. Voxels next to an unassigned one test every grain within the
    radius.

    Parameters
    ----------
    model, points, orientations, centres
        As :func:`assign_voxels`.
    ijk : ndarray of int, shape (V, 3)
        Voxel indices of ``points``.
    previous : ndarray of int, shape (V,), optional
        Grain of each voxel from an earlier pass with the same grains (-1 = none).
    step : int
        Lattice spacing (voxels) of the first pass.
    **kwargs
        ``radius``, ``threshold``, ``tol_px``, ``tie``, ``abort_level`` of
        :func:`assign_voxels`.

    Returns
    -------
    Assignment
        ``n_tests`` counts the tests of both passes.
    """
    n_tests = 0
    if previous is None:
        coarse = np.flatnonzero(np.all(ijk % step == step // 2, axis=1))
        if coarse.size < 8 or step <= 1:
            return assign_voxels(model, points, orientations, centres, **kwargs)
        first = assign_voxels(model, points[coarse], orientations, centres, **kwargs)
        n_tests += first.n_tests
        labels = np.full(len(points), -1, dtype=np.int64)
        labels[coarse] = first.grain
        known = np.zeros(len(points), dtype=bool)
        known[coarse] = True
        reach = step
    else:
        labels, known, reach = np.asarray(previous), np.ones(len(points), bool), 1
    vox, grn, full = neighbour_pairs(ijk, labels, known, reach)
    fv, fg = radius_pairs(points[full], centres, kwargs["radius"])
    vox = np.concatenate([vox, np.flatnonzero(full)[fv]])
    grn = np.concatenate([grn, fg])
    result = assign_voxels(model, points, orientations, centres, pairs=(vox, grn), **kwargs)
    result.n_tests += n_tests
    return result


def grain_adjacency(labels: np.ndarray) -> np.ndarray:
    """Pairs ``(a, b)``, a < b, of labels (> 0) that share a voxel face, shape (n, 2)."""
    pairs = []
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)[:-1].ravel()
        b = np.moveaxis(labels, axis, 0)[1:].ravel()
        m = (a != b) & (a > 0) & (b > 0)
        pairs.append(np.stack([np.minimum(a[m], b[m]), np.maximum(a[m], b[m])], axis=1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(pairs), axis=0)


def merge_grains(labels: np.ndarray, orientations: np.ndarray, max_angle_deg: float = 0.5
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Merge face-neighbouring grains closer than ``max_angle_deg`` (cubic misorientation).

    Parameters
    ----------
    labels : ndarray of int, shape (Z, Y, X)
        Grain label per voxel, 1..G (0 = none); label k has orientation
        ``orientations[k - 1]``.
    orientations : ndarray, shape (G, 3, 3)
    max_angle_deg : float

    Returns
    -------
    labels : ndarray
        Relabelled volume (merged grains take the label of their largest member).
    mapping : ndarray, shape (G + 1,)
        Old label -> new label (0 -> 0).
    """
    n = len(orientations)
    parent = np.arange(n + 1)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    pairs = grain_adjacency(labels)
    if len(pairs):
        angles = misorientation_deg(orientations[pairs[:, 0] - 1], orientations[pairs[:, 1] - 1])
        for (a, b), angle in zip(pairs, angles):
            if angle < max_angle_deg:
                ra, rb = find(int(a)), find(int(b))
                if ra != rb:
                    if sizes[ra] >= sizes[rb]:
                        parent[rb] = ra
                        sizes[ra] += sizes[rb]
                    else:
                        parent[ra] = rb
                        sizes[rb] += sizes[ra]
    mapping = np.array([find(k) for k in range(n + 1)])
    mapping[0] = 0
    return mapping[labels], mapping


def drop_small_grains(labels: np.ndarray, min_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    """Unassign the voxels of grains smaller than ``min_voxels``; also drop grains whose
    voxels are not one face-connected piece, keeping only the largest piece.

    Returns
    -------
    labels : ndarray
        The volume with small grains (and stray pieces) set to 0.
    dropped : ndarray of int
        Labels removed entirely.
    """
    labels = labels.copy()
    structure = ndimage.generate_binary_structure(3, 1)
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        region = labels[sl] == k
        pieces, n_pieces = ndimage.label(region, structure)
        if n_pieces > 1:
            sizes = np.bincount(pieces.ravel())[1:]
            keep = int(np.argmax(sizes)) + 1
            sub = labels[sl]
            sub[(pieces > 0) & (pieces != keep)] = 0
    counts = np.bincount(labels.ravel())
    small = np.flatnonzero((counts > 0) & (counts < min_voxels))
    small = small[small > 0]
    labels[np.isin(labels, small)] = 0
    return labels, small


def poor_region_seeds(poor: np.ndarray, kji: tuple[np.ndarray, ...], shape: tuple[int, ...],
                  min_voxels: int, limit: int) -> np.ndarray:
    """Indices (into the mask's voxel list) of one seed per connected poor region."""
    volume = np.zeros(shape, dtype=bool)
    volume[kji] = poor
    regions, n = ndimage.label(volume)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    sizes = np.bincount(regions.ravel())[1:]
    depth = ndimage.distance_transform_edt(volume)
    index_of = np.full(shape, -1, dtype=np.int64)
    index_of[kji] = np.arange(len(poor))
    seeds = []
    for label in np.argsort(-sizes)[:limit] + 1:
        if sizes[label - 1] < min_voxels:
            break
        inside = np.flatnonzero(regions.ravel() == label)
        best = inside[np.argmax(depth.ravel()[inside])]
        seeds.append(index_of.ravel()[best])
    return np.asarray(seeds, dtype=np.int64)
