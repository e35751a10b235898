"""Numba kernels of the forward model: exact polychromatic Laue condition per sub-point.

Private: :mod:`labdct_live.simulation.forward` prepares the arrays and calls these. Every candidate
(grain, reflection) is traced independently (``prange``) into its own patch of a flat buffer,
so the parallel loop never writes to shared memory.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

HC = 12.398419843  # keV·Å


@njit(cache=True, inline="always")
def _laue_hit(px, py, pz, sx, gx, gy, gz, gn, det):
    """Trace one point: returns (ok, row, col, sin_theta, kox, koy, koz, l_in_dir...)."""
    # incident direction from the source (sx, 0, 0)
    dx = px - sx
    dy = py
    dz = pz
    inv = 1.0 / np.sqrt(dx * dx + dy * dy + dz * dz)
    kx, ky, kz = dx * inv, dy * inv, dz * inv
    ux, uy, uz = gx / gn, gy / gn, gz / gn
    sin_t = -(kx * ux + ky * uy + kz * uz)
    if sin_t <= 0.0:
        return False, 0.0, 0.0, 0.0, kx, ky, kz, 0.0, 0.0, 0.0
    ox = kx + 2.0 * sin_t * ux
    oy = ky + 2.0 * sin_t * uy
    oz = kz + 2.0 * sin_t * uz
    # detector plane: origin (det[0..2]), normal (det[3..5]); in-plane axes e_y (det[6..8]),
    # e_z (det[9..11]); pixel size det[12]; centre row/col det[13], det[14]
    denom = ox * det[3] + oy * det[4] + oz * det[5]
    if denom <= 1e-12:
        return False, 0.0, 0.0, sin_t, kx, ky, kz, ox, oy, oz
    t = ((det[0] - px) * det[3] + (det[1] - py) * det[4] + (det[2] - pz) * det[5]) / denom
    qx = px + t * ox - det[0]
    qy = py + t * oy - det[1]
    qz = pz + t * oz - det[2]
    u = qx * det[6] + qy * det[7] + qz * det[8]
    v = qx * det[9] + qy * det[10] + qz * det[11]
    col = det[14] - u / det[12]
    row = det[13] - v / det[12]
    return True, row, col, sin_t, kx, ky, kz, ox, oy, oz


@njit(cache=True, inline="always")
def _exit_distance(px, py, dx, dy, radius):
    """Distance from (px, py) inside a vertical cylinder to its wall along (dx, dy)."""
    a = dx * dx + dy * dy
    if a < 1e-16:
        return 0.0
    b = 2.0 * (px * dx + py * dy)
    c = px * px + py * py - radius * radius
    disc = b * b - 4.0 * a * c
    if disc < 0.0:
        return 0.0
    t = (-b + np.sqrt(disc)) / (2.0 * a)
    return t if t > 0.0 else 0.0


@njit(cache=True, parallel=True, nogil=True)
def candidate_bboxes(cells, grain_start, cand_grain, cand_g, det, sx, e_min, e_max, out):
    """Pixel bounding box of the cell-centre hits of every candidate.

    ``out[k] = (row_min, row_max, col_min, col_max)``; ``row_min > row_max`` when no cell
    centre of the candidate satisfies the Laue condition inside the energy band.
    """
    for k in prange(cand_grain.shape[0]):
        g = cand_grain[k]
        gx, gy, gz = cand_g[k, 0], cand_g[k, 1], cand_g[k, 2]
        gn = np.sqrt(gx * gx + gy * gy + gz * gz)
        rmin, rmax, cmin, cmax = 1e30, -1e30, 1e30, -1e30
        for c in range(grain_start[g], grain_start[g + 1]):
            ok, row, col, sin_t, kx, ky, kz, ox, oy, oz = _laue_hit(
                cells[c, 0], cells[c, 1], cells[c, 2], sx, gx, gy, gz, gn, det)
            if not ok:
                continue
            energy = HC * gn / (4.0 * np.pi * sin_t)
            if energy < e_min or energy > e_max:
                continue
            rmin = min(rmin, row)
            rmax = max(rmax, row)
            cmin = min(cmin, col)
            cmax = max(cmax, col)
        out[k, 0], out[k, 1], out[k, 2], out[k, 3] = rmin, rmax, cmin, cmax


@njit(cache=True, parallel=True, nogil=True)
def deposit_candidates(
    cells, grain_start, cand_grain, cand_g, cand_weight, det, sx, sub_offsets,
    e_grid0, e_step, spectrum, mu, radius, beamstop, shape,
    patch_box, patch_offset, buffer, sums,
):
    """Ray-trace every sub-point of every candidate and splat it bilinearly into its patch.

    ``cand_weight[k]`` holds the constant factors (|F|², sub-cell volume, global scale).
    ``sums[k] = (Σw, Σw·E, Σw·kout_x, Σw·kout_y, Σw·kout_z, n_rays)`` over rays that reached the
    detector outside the beam stop.
    """
    n_sub = sub_offsets.shape[0]
    n_e = spectrum.shape[0]
    for k in prange(cand_grain.shape[0]):
        r0, c0, h, w = patch_box[k, 0], patch_box[k, 1], patch_box[k, 2], patch_box[k, 3]
        if h <= 0 or w <= 0:
            continue
        base = patch_offset[k]
        g = cand_grain[k]
        gx, gy, gz = cand_g[k, 0], cand_g[k, 1], cand_g[k, 2]
        gn = np.sqrt(gx * gx + gy * gy + gz * gz)
        s_w = s_e = s_x = s_y = s_z = 0.0
        n_rays = 0
        for c in range(grain_start[g], grain_start[g + 1]):
            # Absorption varies little within a cell (<= 10 µm): compute it once per cell.
            attenuation = -1.0
            for s in range(n_sub):
                px = cells[c, 0] + sub_offsets[s, 0]
                py = cells[c, 1] + sub_offsets[s, 1]
                pz = cells[c, 2] + sub_offsets[s, 2]
                ok, row, col, sin_t, kx, ky, kz, ox, oy, oz = _laue_hit(
                    px, py, pz, sx, gx, gy, gz, gn, det)
                if not ok:
                    continue
                lam = 4.0 * np.pi * sin_t / gn
                energy = HC / lam
                fe = (energy - e_grid0) / e_step
                ie = int(fe)
                if ie < 0 or ie >= n_e - 1:
                    continue
                fe -= ie
                i0 = spectrum[ie] * (1.0 - fe) + spectrum[ie + 1] * fe
                if i0 <= 0.0:
                    continue
                if row < -0.5 or col < -0.5 or row > shape[0] - 0.5 or col > shape[1] - 0.5:
                    continue
                ri = int(np.floor(row + 0.5))
                ci = int(np.floor(col + 0.5))
                if beamstop[0] <= ri <= beamstop[1] and beamstop[2] <= ci <= beamstop[3]:
                    continue
                if attenuation < 0.0:
                    mu_e = mu[ie] * (1.0 - fe) + mu[ie + 1] * fe
                    path = (_exit_distance(cells[c, 0], cells[c, 1], -kx, -ky, radius)
                            + _exit_distance(cells[c, 0], cells[c, 1], ox, oy, radius))
                    attenuation = np.exp(-mu_e * path)
                cos2t = 1.0 - 2.0 * sin_t * sin_t
                sin2t = 2.0 * sin_t * np.sqrt(1.0 - sin_t * sin_t)
                lorentz = 1.0 / sin2t
                polar = 0.5 * (1.0 + cos2t * cos2t)
                weight = cand_weight[k] * i0 * lam * lam * lam * lorentz * polar * attenuation
                # bilinear splat into the candidate's patch
                lr = row - r0
                lc = col - c0
                ir = int(np.floor(lr))
                ic = int(np.floor(lc))
                fr = lr - ir
                fc = lc - ic
                for dr in range(2):
                    rr = ir + dr
                    if rr < 0 or rr >= h:
                        continue
                    wr = fr if dr == 1 else 1.0 - fr
                    for dc in range(2):
                        cc = ic + dc
                        if cc < 0 or cc >= w:
                            continue
                        wc = fc if dc == 1 else 1.0 - fc
                        buffer[base + rr * w + cc] += weight * wr * wc
                s_w += weight
                s_e += weight * energy
                s_x += weight * ox
                s_y += weight * oy
                s_z += weight * oz
                n_rays += 1
        sums[k, 0] = s_w
        sums[k, 1] = s_e
        sums[k, 2] = s_x
        sums[k, 3] = s_y
        sums[k, 4] = s_z
        sums[k, 5] = n_rays
