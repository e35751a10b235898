"""Numba kernels of the forward-model indexing (private; see :mod:`.forward`).

The ray of a reflection is traced by the simulator's own kernel
(:func:`labdct_live.simulation._raytrace._laue_hit`), so the reconstruction predicts spots with
exactly the physics that made the simulated frames (docs/physics.md §2). The kernels add the energy
band, the detector and beam-stop tests and a look-up in a precomputed distance map.

Every outer loop is a ``prange`` over independent items (orientations or position/orientation
pairs); no two iterations write to the same memory.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from labdct_live.simulation._raytrace import HC, _laue_hit

_FOUR_PI = 4.0 * np.pi


@njit(cache=True, inline="always")
def _predict(px, py, pz, gx, gy, gz, gn, sx, det, e_min, e_max, rows, cols, bs):
    """Pixel of one reflection from one lab point; ``ok`` False when it is not recorded."""
    ok, row, col, sin_t, kx, ky, kz, ox, oy, oz = _laue_hit(px, py, pz, sx, gx, gy, gz, gn,
                                                            det)
    if not ok:
        return False, 0.0, 0.0
    energy = HC * gn / (_FOUR_PI * sin_t)
    if energy < e_min or energy > e_max:
        return False, 0.0, 0.0
    if row < -0.5 or col < -0.5 or row > rows - 0.5 or col > cols - 0.5:
        return False, 0.0, 0.0
    ri = int(np.floor(row + 0.5))
    ci = int(np.floor(col + 0.5))
    if bs[0] <= ri <= bs[1] and bs[2] <= ci <= bs[3]:
        return False, 0.0, 0.0
    return True, row, col


@njit(cache=True, parallel=True, nogil=True)
def coarse_scores(seed, mats, bh, gn, cos_w, sin_w, map_index, det, sx, e_min, e_max,
                  shape, bs, polar, tt_step, eta_step, tol_units, abort_after, abort_frac,
                  out_pred, out_match):
    """Direction-match score of many orientations at one seed point.

    A predicted spot matches when the scattering vector of the nearest segmented pixel (both
    seen from the rotation axis) is within ``tol_units`` of the map's units (the polar map
    holds, per frame, the angle to the nearest segmented scattering vector).

    ``mats`` (O, 3, 3) orientation matrices U; ``bh`` (J, 3) B·h in the crystal frame;
    ``cos_w, sin_w`` (F,) of the frames to use, in the order to use them; ``map_index`` (F,)
    their rows in ``polar``. An orientation is abandoned once it has ``abort_after``
    predictions and matches fewer than ``abort_frac`` of them.
    """
    n_o = mats.shape[0]
    n_j = bh.shape[0]
    n_f = cos_w.shape[0]
    rows = shape[0]
    cols = shape[1]
    n_tt = polar.shape[1]
    n_eta = polar.shape[2]
    for o in prange(n_o):
        u = mats[o]
        n_pred = 0
        n_match = 0
        for f in range(n_f):
            c = cos_w[f]
            s = sin_w[f]
            px = c * seed[0] - s * seed[1]
            py = s * seed[0] + c * seed[1]
            pz = seed[2]
            m = map_index[f]
            for j in range(n_j):
                hx = u[0, 0] * bh[j, 0] + u[0, 1] * bh[j, 1] + u[0, 2] * bh[j, 2]
                hy = u[1, 0] * bh[j, 0] + u[1, 1] * bh[j, 1] + u[1, 2] * bh[j, 2]
                hz = u[2, 0] * bh[j, 0] + u[2, 1] * bh[j, 1] + u[2, 2] * bh[j, 2]
                gx = c * hx - s * hy
                gy = s * hx + c * hy
                ok, row, col = _predict(px, py, pz, gx, gy, hz, gn[j], sx, det, e_min, e_max,
                                        rows, cols, bs)
                if not ok:
                    continue
                n_pred += 1
                # lab point of the pixel, seen from the origin
                du = -(col - det[14]) * det[12]
                dv = -(row - det[13]) * det[12]
                qx = det[0] + du * det[6] + dv * det[9]
                qy = det[1] + du * det[7] + dv * det[10]
                qz = det[2] + du * det[8] + dv * det[11]
                qn = np.sqrt(qx * qx + qy * qy + qz * qz)
                tt = np.degrees(np.arccos(min(1.0, max(-1.0, qx / qn))))
                eta = np.degrees(np.arctan2(-qy, qz))
                it = int(tt / tt_step)
                if it >= n_tt:
                    continue
                ie = int((eta + 180.0) / eta_step) % n_eta
                if polar[m, it, ie] <= tol_units:
                    n_match += 1
            if n_pred >= abort_after and n_match < abort_frac * n_pred:
                break
        out_pred[o] = n_pred
        out_match[o] = n_match


@njit(cache=True, nogil=True)
def predicted_spots(x0, x1, x2, u, bh, gn, cos_w, sin_w, map_index, det, sx, e_min, e_max,
                    shape, bs, dist, dist_unit, out_map, out_row, out_col, out_dist):
    """Every recorded spot of one point and orientation: its map, pixel (row, col) and
    distance (px) to the nearest segmented pixel; returns how many were written (the
    outputs hold at least frames x reflections entries)."""
    rows = shape[0]
    cols = shape[1]
    n = 0
    for f in range(cos_w.shape[0]):
        c = cos_w[f]
        s = sin_w[f]
        px = c * x0 - s * x1
        py = s * x0 + c * x1
        m = map_index[f]
        for j in range(bh.shape[0]):
            hx = u[0, 0] * bh[j, 0] + u[0, 1] * bh[j, 1] + u[0, 2] * bh[j, 2]
            hy = u[1, 0] * bh[j, 0] + u[1, 1] * bh[j, 1] + u[1, 2] * bh[j, 2]
            hz = u[2, 0] * bh[j, 0] + u[2, 1] * bh[j, 1] + u[2, 2] * bh[j, 2]
            ok, row, col = _predict(px, py, x2, c * hx - s * hy, s * hx + c * hy, hz, gn[j],
                                    sx, det, e_min, e_max, rows, cols, bs)
            if not ok:
                continue
            ri = min(max(int(np.floor(row + 0.5)), 0), rows - 1)
            ci = min(max(int(np.floor(col + 0.5)), 0), cols - 1)
            out_map[n] = m
            out_row[n] = row
            out_col[n] = col
            out_dist[n] = dist[m, ri, ci] * dist_unit
            n += 1
    return n


@njit(cache=True, inline="always")
def _pair_score(x0, x1, x2, u, bh, gn, cos_w, sin_w, map_index, det, sx, e_min, e_max,
                rows, cols, bs, dist, depth, dist_unit, depth_cap, tol, inv2s2, abort_after,
                abort_frac):
    """(n_pred, n_hit, soft, depth) of one point and orientation (see
    :func:`pixel_scores`)."""
    n_j = bh.shape[0]
    n_f = cos_w.shape[0]
    n_pred = 0
    n_hit = 0
    soft = 0.0
    deep = 0.0
    for f in range(n_f):
        c = cos_w[f]
        s = sin_w[f]
        px = c * x0 - s * x1
        py = s * x0 + c * x1
        pz = x2
        m = map_index[f]
        for j in range(n_j):
            hx = u[0, 0] * bh[j, 0] + u[0, 1] * bh[j, 1] + u[0, 2] * bh[j, 2]
            hy = u[1, 0] * bh[j, 0] + u[1, 1] * bh[j, 1] + u[1, 2] * bh[j, 2]
            hz = u[2, 0] * bh[j, 0] + u[2, 1] * bh[j, 1] + u[2, 2] * bh[j, 2]
            gx = c * hx - s * hy
            gy = s * hx + c * hy
            ok, row, col = _predict(px, py, pz, gx, gy, hz, gn[j], sx, det, e_min, e_max,
                                    rows, cols, bs)
            if not ok:
                continue
            ri = min(max(int(np.floor(row + 0.5)), 0), rows - 1)
            ci = min(max(int(np.floor(col + 0.5)), 0), cols - 1)
            d = dist[m, ri, ci] * dist_unit
            n_pred += 1
            if d <= tol:
                n_hit += 1
            if inv2s2 > 0.0:
                soft += np.exp(-d * d * inv2s2)
            if depth_cap > 0.0:
                deep += min(depth[m, ri, ci] * dist_unit, depth_cap)
        if abort_after > 0 and n_pred >= abort_after and n_hit < abort_frac * n_pred:
            break
    return n_pred, n_hit, soft, deep


@njit(cache=True, parallel=True, nogil=True)
def pixel_scores(points, mats, bh, gn, cos_w, sin_w, map_index, det, sx, e_min, e_max,
                 shape, bs, dist, depth, dist_unit, depth_cap, tol, sigma, abort_after,
                 abort_frac, out_pred, out_hit, out_soft, out_depth):
    """Forward-model completeness of (point, orientation) pairs.

    ``points`` (P, 3) sample-frame positions (mm) and ``mats`` (P, 3, 3) their orientations
    U; ``dist`` (M, H, W) uint8 distance, in ``dist_unit`` px, from each pixel to the nearest
    segmented pixel (255 = far) and ``depth`` (M, H, W) uint8 the distance, same unit, from
    each segmented pixel to the nearest unsegmented one (0 outside spots). A predicted spot
    is a hit when ``dist`` is at most ``tol`` px; ``out_soft`` adds ``exp(-d²/2σ²)`` per
    predicted spot (σ > 0), a smooth score for the simplex; ``out_depth`` adds the depth
    inside the spot, capped at ``depth_cap`` px (> 0), which tells apart two grains that
    both hit every spot. A pair is abandoned once it has ``abort_after`` predictions and
    fewer than ``abort_frac`` of them hit (``abort_after`` <= 0: never).
    """
    inv2s2 = 0.5 / (sigma * sigma) if sigma > 0 else 0.0
    for p in prange(points.shape[0]):
        n_pred, n_hit, soft, deep = _pair_score(
            points[p, 0], points[p, 1], points[p, 2], mats[p], bh, gn, cos_w, sin_w,
            map_index, det, sx, e_min, e_max, shape[0], shape[1], bs, dist, depth, dist_unit,
            depth_cap, tol, inv2s2, abort_after, abort_frac)
        out_pred[p] = n_pred
        out_hit[p] = n_hit
        out_soft[p] = soft
        out_depth[p] = deep


@njit(cache=True, nogil=True)
def pixel_scores_serial(points, mats, bh, gn, cos_w, sin_w, map_index, det, sx, e_min, e_max,
                        shape, bs, dist, depth, dist_unit, depth_cap, tol, sigma,
                        abort_after, abort_frac, out_pred, out_hit, out_soft, out_depth):
    """:func:`pixel_scores` on one thread: no thread start-up for a few pairs (the
    simplex evaluates one at a time)."""
    inv2s2 = 0.5 / (sigma * sigma) if sigma > 0 else 0.0
    for p in range(points.shape[0]):
        n_pred, n_hit, soft, deep = _pair_score(
            points[p, 0], points[p, 1], points[p, 2], mats[p], bh, gn, cos_w, sin_w,
            map_index, det, sx, e_min, e_max, shape[0], shape[1], bs, dist, depth, dist_unit,
            depth_cap, tol, inv2s2, abort_after, abort_frac)
        out_pred[p] = n_pred
        out_hit[p] = n_hit
        out_soft[p] = soft
        out_depth[p] = deep


@njit(cache=True, parallel=True, nogil=True)
def active_reflections(centres, mats, bh, gn, cos_w, sin_w, det, sx, sin_lo, sin_hi,
                       sin_margin, shape, px_margin, out):
    """Which (frame, reflection) pairs a grain may record from anywhere near its centre.

    ``out[g, f, j]`` is True when reflection ``j`` of grain ``g`` (orientation ``mats[g]``)
    at frame ``f``, traced from the grain's centre, satisfies the Laue condition with
    ``sin θ`` within ``sin_margin`` of the band ``[sin_lo[j], sin_hi[j]]`` and meets the
    detector plane within ``px_margin`` pixels of the frame. A point within the margin's
    distance of the centre can only record spots of these pairs; the exact test follows.
    """
    n_g = centres.shape[0]
    n_j = bh.shape[0]
    n_f = cos_w.shape[0]
    rows = shape[0]
    cols = shape[1]
    for g in prange(n_g):
        u = mats[g]
        for f in range(n_f):
            c = cos_w[f]
            s = sin_w[f]
            px = c * centres[g, 0] - s * centres[g, 1]
            py = s * centres[g, 0] + c * centres[g, 1]
            pz = centres[g, 2]
            for j in range(n_j):
                hx = u[0, 0] * bh[j, 0] + u[0, 1] * bh[j, 1] + u[0, 2] * bh[j, 2]
                hy = u[1, 0] * bh[j, 0] + u[1, 1] * bh[j, 1] + u[1, 2] * bh[j, 2]
                hz = u[2, 0] * bh[j, 0] + u[2, 1] * bh[j, 1] + u[2, 2] * bh[j, 2]
                gx = c * hx - s * hy
                gy = s * hx + c * hy
                # _laue_hit refuses sin θ <= 0; test the band with the margin ourselves
                dx = px - sx
                inv = 1.0 / np.sqrt(dx * dx + py * py + pz * pz)
                sin_t = -(dx * gx + py * gy + pz * hz) * inv / gn[j]
                if sin_t < sin_lo[j] - sin_margin or sin_t > sin_hi[j] + sin_margin:
                    continue
                if sin_t <= 1e-6:
                    out[g, f, j] = True  # grazing: keep, the exact test decides
                    continue
                ok, row, col, st, kx, ky, kz, ox, oy, oz = _laue_hit(
                    px, py, pz, sx, gx, gy, hz, gn[j], det)
                if not ok:
                    continue
                if (row < -px_margin or col < -px_margin or row > rows + px_margin
                        or col > cols + px_margin):
                    continue
                out[g, f, j] = True


@njit(cache=True, parallel=True, nogil=True)
def pixel_scores_active(points, pair_grain, mats, bh, gn, cos_w, sin_w, map_index,
                        active_start, active_f, active_j, det, sx, e_min, e_max, shape, bs,
                        dist, dist_unit, tol, abort_after, abort_frac, out_pred, out_hit):
    """:func:`pixel_scores` restricted to each grain's active (frame, reflection) pairs.

    Pair ``p`` tests point ``points[p]`` with grain ``g = pair_grain[p]`` (orientation
    ``mats[g]``) on the pairs ``active_f/active_j[active_start[g]:active_start[g + 1]]``
    (frame positions into ``cos_w``, in test order), from :func:`active_reflections`.
    """
    rows = shape[0]
    cols = shape[1]
    for p in prange(points.shape[0]):
        g = pair_grain[p]
        u = mats[g]
        x0 = points[p, 0]
        x1 = points[p, 1]
        x2 = points[p, 2]
        n_pred = 0
        n_hit = 0
        last_f = -1
        px = 0.0
        py = 0.0
        c = 1.0
        s = 0.0
        for a in range(active_start[g], active_start[g + 1]):
            f = active_f[a]
            j = active_j[a]
            if f != last_f:
                if (abort_after > 0 and n_pred >= abort_after
                        and n_hit < abort_frac * n_pred):
                    break
                c = cos_w[f]
                s = sin_w[f]
                px = c * x0 - s * x1
                py = s * x0 + c * x1
                last_f = f
            hx = u[0, 0] * bh[j, 0] + u[0, 1] * bh[j, 1] + u[0, 2] * bh[j, 2]
            hy = u[1, 0] * bh[j, 0] + u[1, 1] * bh[j, 1] + u[1, 2] * bh[j, 2]
            hz = u[2, 0] * bh[j, 0] + u[2, 1] * bh[j, 1] + u[2, 2] * bh[j, 2]
            gx = c * hx - s * hy
            gy = s * hx + c * hy
            ok, row, col = _predict(px, py, x2, gx, gy, hz, gn[j], sx, det, e_min, e_max,
                                    rows, cols, bs)
            if not ok:
                continue
            ri = min(max(int(np.floor(row + 0.5)), 0), rows - 1)
            ci = min(max(int(np.floor(col + 0.5)), 0), cols - 1)
            n_pred += 1
            if dist[map_index[f], ri, ci] * dist_unit <= tol:
                n_hit += 1
        out_pred[p] = n_pred
        out_hit[p] = n_hit


@njit(cache=True, parallel=True, nogil=True)
def quantized_distance(feature, unit, out):
    """Exact Euclidean distance from every pixel to the nearest ``True`` pixel of
    ``feature``, stored as ``min(round(d / unit), 255)`` in ``out`` (uint8).

    Separable squared-distance transform (Felzenszwalb & Huttenlocher 2012): a 1-D pass
    along the columns, then the lower envelope of parabolas along the rows; each row and
    column runs in parallel. 255 everywhere when ``feature`` has no True pixel.
    """
    rows, cols = feature.shape
    inf = 1e20
    g = np.empty((rows, cols))
    for c in prange(cols):
        last = -1
        for r in range(rows):
            if feature[r, c]:
                last = r
            g[r, c] = (r - last) if last >= 0 else inf
        last = -1
        for r in range(rows - 1, -1, -1):
            if feature[r, c]:
                last = r
            if last >= 0 and last - r < g[r, c]:
                g[r, c] = last - r
    for r in prange(rows):
        f = np.empty(cols)
        for c in range(cols):
            f[c] = g[r, c] * g[r, c] if g[r, c] < inf else inf
        v = np.empty(cols, dtype=np.int64)
        z = np.empty(cols + 1)
        k = 0
        v[0] = 0
        z[0] = -inf
        z[1] = inf
        for q in range(1, cols):
            s = ((f[q] + q * q) - (f[v[k]] + v[k] * v[k])) / (2.0 * q - 2.0 * v[k])
            while s <= z[k]:
                k -= 1
                s = ((f[q] + q * q) - (f[v[k]] + v[k] * v[k])) / (2.0 * q - 2.0 * v[k])
            k += 1
            v[k] = q
            z[k] = s
            z[k + 1] = inf
        k = 0
        for q in range(cols):
            while z[k + 1] < q:
                k += 1
            d2 = (q - v[k]) * (q - v[k]) + f[v[k]]
            if d2 >= inf * 0.5:
                out[r, q] = 255
            else:
                val = np.sqrt(d2) / unit + 0.5
                out[r, q] = 255 if val >= 255.0 else np.uint8(val)
