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

__all__ = ["Assignment", "assign_voxels", "merge_grains", "drop_small_grains",
           "grain_adjacency"]


@dataclass
class Assignment:
    """Grain index per voxel (-1 = none) and the completeness of that choice."""

    grain: np.ndarray  #: (V,) int, index into the grain list, -1 = unassigned
    completeness: np.ndarray  #: (V,) float, completeness of the chosen (or best) grain
    n_tests: int  #: voxel-grain pairs tested


def assign_voxels(model: ForwardModel, points: np.ndarray, orientations: np.ndarray,
                  centres: np.ndarray, *, radius: float, threshold: float, tol_px: float,
                  tie: float = 0.02, depth_cap: float = 0.0, abort_level: float | None = None,
                  chunk: int = 200_000) -> Assignment:
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
    tree = cKDTree(centres)
    neighbours = tree.query_ball_point(points, r=radius)
    counts = np.fromiter((len(n) for n in neighbours), dtype=np.int64, count=n_vox)
    vox = np.repeat(np.arange(n_vox), counts)
    grn = np.fromiter((g for n in neighbours for g in n), dtype=np.int64, count=int(counts.sum()))
    # Hopeless pairs stop early: below half the threshold after 30 predictions.
    comp = np.zeros(len(vox))
    depth = np.zeros(len(vox))
    for start in range(0, len(vox), chunk):
        sl = slice(start, start + chunk)
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
    if len(vox) == 0:
        return Assignment(grain, best, 0)
    dist = np.linalg.norm(points[vox] - centres[grn], axis=1)
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
