"""Candidate orientations at a seed from the segmented spots themselves (spot-pair indexing).

Seen from a seed point, each segmented spot (its centroid) gives one scattering direction
``Ĝ = (k̂_out - k̂_in) / |k̂_out - k̂_in|``, turned back into the sample frame by its frame's ω.
The grain around the seed records each of its reflections on many frames (the Laue
condition picks the wavelength), so its reflection directions ``U B h`` collect many spots
within a fraction of a degree, while a random direction collects almost none: on the full
D35 (118 000 spots) a grain's reflections gather 7-23 spots within 0.2° of its
centroid, a random direction 0.3 on average (docs/reconstruction.md).

The most populated directions (*peaks*) are paired: two peaks whose angle matches the angle
between two reflections give an orientation (the triad of the two pairs). The candidates
are ranked by how many of their reflection directions fall on populated directions, which
needs no ray tracing. Unlike the direction test of a fundamental-zone grid, this does not
saturate when the frames are crowded.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from labdct_live.reconstruction.forward import ForwardModel

__all__ = ["SpotLedger", "spot_directions", "direction_peaks", "pair_orientations",
           "spot_candidates"]


def _chord(deg: float) -> float:
    """Chord length between unit vectors ``deg`` apart."""
    return float(2.0 * np.sin(np.radians(deg) / 2.0))


class SpotLedger:
    """Which segmented spots the grains found so far explain.

    Peaks of grains already found crowd out those of the grains still to find: on the full
    D35 the 150 most populated directions seen from a grain's centroid hold 0-2 of that
    grain's own reflections for one grain in eight. Leaving out explained spots lets the
    remaining grains' directions rise (the usual peel-off of spot indexing).

    Parameters
    ----------
    model : ForwardModel
        Its maps must hold the spot centroids.
    radius_px : float
        A predicted spot that hits explains the nearest spot centroid of its frame within
        this distance (px).
    """

    def __init__(self, model: ForwardModel, radius_px: float = 20.0) -> None:
        spots = model.maps.spots
        spots = np.zeros((0, 3)) if spots is None else spots
        # frames far apart along a third axis: one tree, no neighbour across frames
        self._frame_gap = 10.0 * float(max(model.scan.geometry.detector_shape)) + radius_px
        self._tree = cKDTree(np.column_stack([spots[:, 0] * self._frame_gap, spots[:, 1:]]))
        self.radius_px = float(radius_px)
        self.explained = np.zeros(len(spots), dtype=bool)

    def explain(self, model: ForwardModel, point: np.ndarray, mat: np.ndarray,
                tol_px: float) -> int:
        """Mark the spots that the grain (``point``, ``mat``) hits; returns how many were
        not explained before."""
        if not len(self.explained):
            return 0
        pred = model.predict(point, mat)
        hit = pred.distance <= tol_px
        query = np.column_stack([pred.map[hit] * self._frame_gap, pred.row[hit], pred.col[hit]])
        dist, index = self._tree.query(query, distance_upper_bound=self.radius_px)
        index = np.unique(index[np.isfinite(dist)])
        new = int(np.count_nonzero(~self.explained[index]))
        self.explained[index] = True
        return new


def spot_directions(model: ForwardModel, seed: np.ndarray,
                    exclude: np.ndarray | None = None) -> np.ndarray:
    """Sample-frame scattering directions (N, 3) of the spot centroids seen from ``seed``.

    A spot of map ``m`` is seen at the ω of the frame whose map is ``m``
    (``model.map_index``), so the ω-scrambled null model gets scrambled directions.
    ``exclude`` (bool, one per spot) leaves spots out (:class:`SpotLedger`).
    """
    spots = model.maps.spots
    if spots is not None and exclude is not None:
        spots = spots[~exclude]
    if spots is None or len(spots) == 0:
        return np.zeros((0, 3))
    g = model.scan.geometry
    frame_of_map = np.empty_like(model.map_index)
    frame_of_map[model.map_index] = np.arange(len(model.map_index))
    frame = frame_of_map[spots[:, 0].astype(np.int64)]
    w = np.radians(model.scan.omegas[frame])
    c, s = np.cos(w), np.sin(w)
    seed = np.asarray(seed, float)
    r = np.stack([c * seed[0] - s * seed[1], s * seed[0] + c * seed[1],
                  np.full_like(c, seed[2])], axis=1)
    k_in = r - np.array([-g.lss, 0.0, 0.0])
    k_in /= np.linalg.norm(k_in, axis=1, keepdims=True)
    k_out = g.pixel_to_lab(spots[:, 1], spots[:, 2]) - r
    k_out /= np.linalg.norm(k_out, axis=1, keepdims=True)
    lab = k_out - k_in
    lab /= np.linalg.norm(lab, axis=1, keepdims=True)
    return np.stack([c * lab[:, 0] + s * lab[:, 1], -s * lab[:, 0] + c * lab[:, 1],
                     lab[:, 2]], axis=1)


def direction_peaks(tree: cKDTree, dirs: np.ndarray, tol_deg: float, min_count: int,
                    max_peaks: int) -> tuple[np.ndarray, np.ndarray]:
    """The most populated directions: spots with the most spots within ``tol_deg``, at
    least ``2 tol_deg`` apart (greedy, most populated first).

    Returns
    -------
    peaks : ndarray, shape (K, 3)
        Mean direction of the spots around each peak.
    counts : ndarray of int, shape (K,)
    """
    if len(dirs) == 0:
        return np.zeros((0, 3)), np.zeros(0, np.int64)
    # each direction's neighbour count, from the pairs (3 times faster than a ball query
    # per direction: most directions have none)
    pairs = tree.query_pairs(_chord(tol_deg), output_type="ndarray")
    counts = 1 + np.bincount(pairs.ravel(), minlength=len(dirs))
    order = np.argsort(-counts, kind="stable")
    order = order[counts[order] >= min_count]
    # Greedy non-maximum suppression: a peak removes every direction within 2 tol_deg.
    suppressed = np.zeros(len(dirs), dtype=bool)
    peaks: list[np.ndarray] = []
    kept: list[int] = []
    for i in order:
        if len(peaks) == max_peaks:
            break
        if suppressed[i]:
            continue
        members = tree.query_ball_point(dirs[i], r=_chord(tol_deg))
        mean = dirs[members].mean(axis=0)
        peaks.append(mean / np.linalg.norm(mean))
        kept.append(int(counts[i]))
        suppressed[tree.query_ball_point(dirs[i], r=_chord(2.0 * tol_deg))] = True
    return np.asarray(peaks).reshape(-1, 3), np.asarray(kept, np.int64)


def _triads(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Orthonormal frames (..., 3, 3) with columns a, a×b, a×(a×b) (normalised)."""
    n = np.cross(a, b)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    m = np.cross(a, n)
    return np.stack([a, n, m], axis=-1)


def pair_orientations(peaks: np.ndarray, crystal: np.ndarray, family: np.ndarray,
                      tol_deg: float) -> np.ndarray:
    """Orientations U mapping two reflections onto two peaks whose angle they share.

    The first reflection of each pair is one representative per family (the reflection
    list is closed under the cube's rotations, so this loses no orientation).

    Parameters
    ----------
    peaks : ndarray, shape (K, 3)
        Sample-frame directions.
    crystal : ndarray, shape (J, 3)
        Unit reflection directions (B h normalised), crystal frame.
    family : ndarray of int, shape (J,)
    tol_deg : float
        Largest difference between the two angles.

    Returns
    -------
    ndarray, shape (M, 3, 3)
    """
    reps = np.unique(family, return_index=True)[1]
    cos_c = np.clip(crystal[reps] @ crystal.T, -1, 1)  # (F, J)
    ang_c = np.degrees(np.arccos(cos_c))
    ang_p = np.degrees(np.arccos(np.clip(peaks @ peaks.T, -1, 1)))  # (K, K)
    ok = (ang_c > 5.0) & (ang_c < 175.0)  # (anti)parallel pairs fix no rotation
    pa, pb = np.nonzero(~np.eye(len(peaks), dtype=bool) & (ang_p > 5.0) & (ang_p < 175.0))
    out = []
    for f, r in enumerate(reps):
        js = np.flatnonzero(ok[f])
        match = np.abs(ang_p[pa, pb][:, None] - ang_c[f, js][None, :]) < tol_deg
        ip, ij = np.nonzero(match)
        if ip.size == 0:
            continue
        sample = _triads(peaks[pa[ip]], peaks[pb[ip]])
        cryst = _triads(np.broadcast_to(crystal[r], (ip.size, 3)), crystal[js[ij]])
        out.append(sample @ np.swapaxes(cryst, -1, -2))
    if not out:
        return np.zeros((0, 3, 3))
    return np.concatenate(out)


def spot_candidates(model: ForwardModel, seed: np.ndarray, *, tol_deg: float = 0.25,
                    min_count: int = 3, max_peaks: int = 150,
                    exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Candidate orientations at a seed, ranked by the populated directions they explain.

    Parameters
    ----------
    model : ForwardModel
        Its maps must hold the spot centroids (``HitMaps.spots``).
    seed : ndarray, shape (3,)
    tol_deg : float
        Angular radius of a populated direction (degrees).
    min_count : int
        Least number of spots of a peak.
    max_peaks : int
        Peaks paired (the most populated).
    exclude : ndarray of bool, optional
        Spots left out (those explained by grains already found, :class:`SpotLedger`).

    Returns
    -------
    mats : ndarray, shape (M, 3, 3)
        Candidates, best first.
    votes : ndarray of int, shape (M,)
        Reflection directions of each candidate that hold at least ``min_count - 1`` spots
        within ``tol_deg``.
    """
    dirs = spot_directions(model, seed, exclude)
    if len(dirs) == 0:
        return np.zeros((0, 3, 3)), np.zeros(0, np.int64)
    tree = cKDTree(dirs)
    peaks, _ = direction_peaks(tree, dirs, tol_deg, min_count, max_peaks)
    material = model.scan.material
    refl = material.reflections
    crystal = refl.hkl @ material.B.T
    crystal = crystal / np.linalg.norm(crystal, axis=1, keepdims=True)
    mats = pair_orientations(peaks, crystal, refl.family, 2.0 * tol_deg)
    if len(mats) == 0:
        return mats, np.zeros(0, np.int64)
    # votes: reflection directions that fall on a peak (the peaks are few, so a random
    # orientation gets almost none)
    predicted = np.einsum("mab,jb->mja", mats, crystal).reshape(-1, 3)
    dist, _ = cKDTree(peaks).query(predicted, distance_upper_bound=_chord(2.0 * tol_deg))
    votes = np.isfinite(dist).reshape(len(mats), -1).sum(axis=1)
    order = np.argsort(-votes, kind="stable")
    return mats[order], votes[order]
