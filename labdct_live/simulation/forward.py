"""Forward simulation of LabDCT projections with per-spot ground truth (docs/physics.md §1-§4).

For each projection the sample is rotated by ``omega`` and every sub-point of every grain is
traced with the exact polychromatic Laue condition: the incident direction is the ray from the
point source through the sub-point, the reflection selects the wavelength
``lambda = 4π sin(theta)/|G|``, and the diffracted ray ``k_out = k_in + 2 sin(theta) G/|G|`` is
intersected with the (possibly tilted) detector. Because each sub-point sees the source from a
different direction, Laue focusing emerges by itself: with Lss = Lsd the spots are narrow
radially and about twice the grain size tangentially.

Intensity of a ray (up to the global ``intensity_scale``)::

    I = I0(E) DQE(E) · lambda³ · V_sub · |F_hkl|² · L · P · exp(-mu(E) (L_in + L_out))

with L = 1/sin 2θ, P = (1 + cos² 2θ)/2. A Gaussian detector blur finishes each spot, the frame
is ``C_BG + spots`` and the beam-stop shadow is 0 (noise-free, like the forward model; noise and
realistic backgrounds come later in :mod:`labdct_live.training.synthesis`).

To keep it fast, candidate reflections are selected per grain from its centroid (with a margin
for the grain's extent) before its sub-points are traced, and the tracing runs in parallel
(numba) over candidates.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage

from labdct_live.simulation import _raytrace
from labdct_live.simulation.geometry import Geometry, rotation_matrix_z
from labdct_live.simulation.microstructure import Sample
from labdct_live.simulation.spectrum import HC_KEV_ANGSTROM, tube_spectrum

__all__ = ["SimulationOptions", "Simulator", "Projection", "SPOT_COLUMNS"]

#: Counts per (µm³ of sub-cell x electron² of |F|² x unit spectrum x Å³), calibrated once so
#: that ``intensity_scale = 1`` gives the median D35 spot a peak of ~100 counts.
_COUNTS_PER_UNIT = 8.0e-3

logger = logging.getLogger(__name__)

#: Columns of the per-spot ground-truth table.
SPOT_COLUMNS = ["spot_id", "grain_id", "h", "k", "l", "omega", "two_theta", "eta", "energy_kev",
                "row", "col", "n_pixels", "intensity", "peak"]


@dataclass(frozen=True)
class SimulationOptions:
    """Detector and rendering options of the forward model.

    Parameters
    ----------
    background_level : float
        Constant background ``C_BG`` of the noise-free frames (counts); 919 in the forward
        model's default.
    blur_sigma : float
        Detector point-spread function, Gaussian SD in pixels.
    intensity_scale : float
        Global scale of all spot intensities; 1 puts the median spot of the paper's D35 sample
        at a peak of about 100 counts above background.
    label_fraction : float
        A pixel belongs to a spot's ground-truth mask where the spot's own (blurred) intensity
        is at least this fraction of its peak and larger than any other spot's there.
    oversample : int or None
        Sub-points per voxel edge; None chooses enough that neighbouring sub-points land less
        than a pixel apart on the detector after the tangential magnification (Lss+Lsd)/Lss.
    spectrum_e_min : float
        Lower end of the useful energy band (keV); the upper end is kvp - 2.
    absorption : bool
        Include absorption in the cylindrical sample.
    """

    background_level: float = 919.0
    blur_sigma: float = 1.0
    intensity_scale: float = 1.0
    label_fraction: float = 0.1
    oversample: int | None = None
    spectrum_e_min: float = 13.0
    absorption: bool = True

    def __post_init__(self) -> None:
        if not (0 <= self.background_level < 65535):
            raise ValueError(f"background_level must be in [0, 65535), got {self.background_level}")
        if not self.blur_sigma >= 0:
            raise ValueError(f"blur_sigma must be >= 0 pixels, got {self.blur_sigma}")
        if not self.intensity_scale > 0:
            raise ValueError(f"intensity_scale must be positive, got {self.intensity_scale}")
        if not 0 < self.label_fraction < 1:
            raise ValueError(f"label_fraction must be in (0, 1), got {self.label_fraction}")
        if self.oversample is not None and self.oversample < 1:
            raise ValueError(f"oversample must be >= 1, got {self.oversample}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Projection:
    """One simulated projection and its ground truth."""

    omega: float  #: rotation angle (degrees)
    frame: np.ndarray  #: uint16 (H, W): C_BG + spots, beam stop 0, noise free
    clean: np.ndarray  #: float32 (H, W): spot intensity above background (counts)
    labels: np.ndarray  #: int32 (H, W): 0 = no spot, k = row k - 1 of ``spots``
    spots: pd.DataFrame = field(repr=False)  #: per-spot ground truth (:data:`SPOT_COLUMNS`)


class Simulator:
    """Forward model of LabDCT projections of one virtual sample in one geometry.

    Parameters
    ----------
    sample : Sample
        From :func:`labdct_live.simulation.microstructure.make_sample`.
    geometry : Geometry
    options : SimulationOptions, optional
    **overrides
        Fields of :class:`SimulationOptions` to change, e.g. ``blur_sigma=1.5``.

    Examples
    --------
    The D18 sample seen by the paper's detector binned to 256² pixels (a quick look):

    >>> from labdct_live.acquisition.detector import scaled_geometry
    >>> from labdct_live.simulation.microstructure import make_sample
    >>> from labdct_live.simulation.presets import preset
    >>> spec, geometry = preset("D18")
    >>> sim = Simulator(make_sample(spec, seed=1), scaled_geometry(geometry, (256, 256)))
    >>> projection = sim.project(0.0)
    >>> projection.frame.dtype, projection.frame.shape
    (dtype('uint16'), (256, 256))
    >>> bool(len(projection.spots) == projection.labels.max() > 100)  # one label per spot
    True
    """

    def __init__(self, sample: Sample, geometry: Geometry,
                 options: SimulationOptions | None = None, **overrides) -> None:
        options = options or SimulationOptions()
        if overrides:
            options = SimulationOptions(**{**asdict(options), **overrides})
        self.sample = sample
        self.geometry = geometry
        self.options = options
        self.background_level = float(options.background_level)

        xyz, gid = sample.voxel_centers()
        order = np.argsort(gid, kind="stable")
        self._cells = np.ascontiguousarray(xyz[order])
        gid = gid[order]
        n_grains = sample.n_grains
        # CSR layout for the kernels: grain index g (id g + 1) owns cells[start[g]:start[g + 1]]
        counts = np.bincount(gid, minlength=n_grains + 1)[1:]
        self._grain_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._centroids = sample.grains[["x", "y", "z"]].to_numpy()
        radii = np.linalg.norm(self._cells - self._centroids[gid - 1], axis=1)
        half_diag = np.sqrt(3) / 2 * sample.voxel_size
        self._grain_radius = np.zeros(n_grains)
        np.maximum.at(self._grain_radius, gid - 1, radii + half_diag)

        refl = sample.material.reflections
        self._hkl = refl.hkl
        self._g_norm = refl.g_norm
        self._f_squared = refl.f_squared
        b_hkl = refl.hkl @ sample.material.B.T  # (J, 3), crystal frame
        # G in the sample frame for every grain and reflection: U_g @ B @ h_j
        self._g_sample = np.einsum("gab,jb->gja", sample.orientations[1:], b_hkl)

        self._spectrum = tube_spectrum(geometry.kvp, sample.material.name,
                                       e_min=options.spectrum_e_min)
        e = self._spectrum.energy
        if not np.allclose(np.diff(e), e[1] - e[0]):
            raise RuntimeError("spectrum energy grid must be regular")
        self._mu = self._spectrum.mu if options.absorption else np.zeros_like(e)

        g = geometry
        r = g._R
        self._det = np.array([*g.detector_origin, *r[:, 0], *r[:, 1], *r[:, 2], g.pixel_size,
                              g.center[0], g.center[1]], dtype=np.float64)
        self._beamstop = np.array(g.beamstop if g.has_beamstop else (1, 0, 1, 0), dtype=np.int64)

        magnification = (g.lss + g.lsd) / g.lss
        n_sub = options.oversample or max(
            1, int(np.ceil(sample.voxel_size * magnification / g.pixel_size)))
        grid = (np.arange(n_sub) + 0.5) / n_sub - 0.5
        sub = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3)
        self._sub_offsets = np.ascontiguousarray(sub * sample.voxel_size)
        self._sub_volume = sample.voxel_size**3 / len(sub)
        self._margin = int(np.ceil(sample.voxel_size * magnification / g.pixel_size
                                   + 4 * options.blur_sigma)) + 2
        self.oversample = n_sub

    # ------------------------------------------------------------------ candidate selection
    def _candidates(self, rot: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(grain index, reflection index, G_lab) of reflections that may reach the detector."""
        g = self.geometry
        spec = self._spectrum
        centroids = self._centroids @ rot.T
        g_lab = self._g_sample @ rot.T  # (G, J, 3)
        k_in = centroids - g.source
        dist = np.linalg.norm(k_in, axis=1)
        k_in /= dist[:, None]
        g_hat = g_lab / self._g_norm[None, :, None]
        sin_t = -np.einsum("ga,gja->gj", k_in, g_hat)
        slack = (self._grain_radius / dist)[:, None] * 1.5 + 1e-4
        sin_lo = HC_KEV_ANGSTROM * self._g_norm / (4 * np.pi * spec.e_max)
        sin_hi = HC_KEV_ANGSTROM * self._g_norm / (4 * np.pi * spec.e_min)
        ok = (sin_t + slack > sin_lo[None, :]) & (sin_t - slack < sin_hi[None, :])
        # centroid ray on the detector, with a margin for the grain's magnified extent
        k_out = k_in[:, None, :] + 2 * np.clip(sin_t, 1e-6, None)[..., None] * g_hat
        hit = g.intersect(centroids[:, None, :], k_out)
        row, col = g.lab_to_pixel(hit)
        margin = (self._grain_radius * (g.lss + g.lsd) / g.lss / g.pixel_size)[:, None] + 20
        rows, cols = g.detector_shape
        with np.errstate(invalid="ignore"):
            ok &= (row > -margin) & (row < rows + margin) & (col > -margin) & (col < cols + margin)
        gi, ji = np.nonzero(ok)
        return gi, ji, np.ascontiguousarray(g_lab[gi, ji])

    # -------------------------------------------------------------------------- projection
    def project(self, omega: float) -> Projection:
        """Simulate the projection at rotation angle ``omega`` (degrees)."""
        g = self.geometry
        opts = self.options
        rows, cols = g.detector_shape
        rot = rotation_matrix_z(omega)
        cells = np.ascontiguousarray(self._cells @ rot.T)
        gi, ji, g_lab = self._candidates(rot)
        cand_grain = gi.astype(np.int64)
        spec = self._spectrum

        boxes = np.empty((len(gi), 4))
        _raytrace.candidate_bboxes(cells, self._grain_start, cand_grain, g_lab, self._det,
                                   -g.lss, spec.e_min, spec.e_max, boxes)
        m = self._margin
        with np.errstate(invalid="ignore"):
            r0 = np.clip(np.floor(boxes[:, 0]) - m, 0, rows).astype(np.int64)
            r1 = np.clip(np.ceil(boxes[:, 1]) + m + 1, 0, rows).astype(np.int64)
            c0 = np.clip(np.floor(boxes[:, 2]) - m, 0, cols).astype(np.int64)
            c1 = np.clip(np.ceil(boxes[:, 3]) + m + 1, 0, cols).astype(np.int64)
        empty = boxes[:, 0] > boxes[:, 1]
        h = np.where(empty, 0, r1 - r0)
        w = np.where(empty, 0, c1 - c0)
        patch_box = np.ascontiguousarray(np.stack([r0, c0, h, w], axis=1))
        sizes = h * w
        patch_offset = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        buffer = np.zeros(int(sizes.sum()), dtype=np.float64)
        sums = np.zeros((len(gi), 6))
        cand_weight = (opts.intensity_scale * _COUNTS_PER_UNIT * self._sub_volume * 1e9
                       * self._f_squared[ji])
        e = spec.energy
        _raytrace.deposit_candidates(
            cells, self._grain_start, cand_grain, g_lab, cand_weight, self._det, -g.lss,
            self._sub_offsets, float(e[0]), float(e[1] - e[0]), spec.weight, self._mu,
            self.sample.spec.diameter / 2, self._beamstop, np.array([rows, cols], np.int64),
            patch_box, patch_offset, buffer, sums)
        return self._render(omega, gi, ji, patch_box, patch_offset, buffer, sums)

    def _render(self, omega, gi, ji, patch_box, patch_offset, buffer, sums) -> Projection:
        g = self.geometry
        opts = self.options
        rows, cols = g.detector_shape
        clean = np.zeros((rows, cols), dtype=np.float32)
        best = np.zeros((rows, cols), dtype=np.float32)
        labels = np.zeros((rows, cols), dtype=np.int32)
        beamstop = g.beamstop_mask()
        records = []
        for k in np.flatnonzero(sums[:, 0] > 0):
            r0, c0, h, w = patch_box[k]
            patch = buffer[patch_offset[k]: patch_offset[k] + h * w].reshape(h, w)
            if opts.blur_sigma > 0:
                patch = ndimage.gaussian_filter(patch, opts.blur_sigma, mode="constant",
                                                truncate=4.0)
            patch = patch.astype(np.float32)
            patch[beamstop[r0: r0 + h, c0: c0 + w]] = 0.0
            total = float(patch.sum())
            if total <= 0:
                continue
            sl = (slice(r0, r0 + h), slice(c0, c0 + w))
            clean[sl] += patch
            peak = float(patch.max())
            support = (patch >= opts.label_fraction * peak) & (patch > best[sl])
            spot_id = len(records) + 1
            labels[sl][support] = spot_id
            best[sl][support] = patch[support]
            rr, cc = np.mgrid[r0: r0 + h, c0: c0 + w]
            s_w, s_e, ox, oy, oz, _ = sums[k]
            k_out = np.array([ox, oy, oz]) / s_w
            k_out /= np.linalg.norm(k_out)
            records.append((
                spot_id, gi[k] + 1, *self._hkl[ji[k]], float(omega),
                float(np.rad2deg(np.arccos(np.clip(k_out[0], -1, 1)))),
                float(np.rad2deg(np.arctan2(-k_out[1], k_out[2]))),
                s_e / s_w, float((rr * patch).sum() / total), float((cc * patch).sum() / total),
                0, total, peak,
            ))
        spots = pd.DataFrame.from_records(records, columns=SPOT_COLUMNS)
        # Spots hidden everywhere by brighter neighbours own no pixel: drop them and renumber.
        n_pixels = np.bincount(labels.ravel(), minlength=len(spots) + 1)[1:]
        keep = n_pixels > 0
        relabel = np.zeros(len(spots) + 1, dtype=np.int32)
        relabel[1:][keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
        labels = relabel[labels]
        spots = spots[keep].reset_index(drop=True)
        spots["n_pixels"] = n_pixels[keep]
        spots["spot_id"] = np.arange(1, len(spots) + 1)
        frame = np.clip(np.rint(clean + self.background_level), 0, 65535).astype(np.uint16)
        frame[beamstop] = 0
        return Projection(omega=float(omega), frame=frame, clean=clean, labels=labels, spots=spots)

    def scan(self, omegas: np.ndarray | None = None) -> Iterator[Projection]:
        """Projections at ``omegas`` (default: the geometry's), in order."""
        for omega in self.geometry.omegas if omegas is None else omegas:
            yield self.project(float(omega))
