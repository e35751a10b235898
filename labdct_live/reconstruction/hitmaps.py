"""Per-frame distance maps: the hit test of a predicted spot is one array look-up.

Two maps per frame (docs/reconstruction.md, "Hit test"):

* **pixel map** — the Euclidean distance (px) from every pixel to the nearest segmented
  pixel (the exact distance transform of the inverted frame, as
  :func:`scipy.ndimage.distance_transform_edt` gives it, computed by a parallel numba
  kernel), stored as uint8
  in quarter pixels (255 = 63.75 px or more). It judges a prediction at the detector's
  resolution (refinement, voxel assignment).
* **polar map** — every segmented pixel seen from the rotation axis as a scattering
  direction (2θ, η) and, on a regular (2θ, η) grid, the angle between each cell's
  scattering vector and the nearest segmented one, uint8 in units of ``polar_unit`` degrees.
  It judges a prediction by direction, with a tolerance of about a degree: what a coarse
  orientation grid needs (the method's step 2, docs/reconstruction.md).

The scattering vector of a ray leaving along (2θ, η) is
``ĝ = (-sin θ, -cos θ sin η, cos θ cos η)``, so moving on the detector by Δ2θ turns ĝ by
Δ2θ / 2 and moving by Δη turns it by Δη cos θ (≈ Δη, θ ≤ 12° here): the map's metric.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from labdct_live.reconstruction import _kernels
from labdct_live.simulation.geometry import Geometry

__all__ = ["HitMaps", "HitMapBuilder", "build_hit_maps", "pixel_depth_map", "pixel_distance_map",
           "spot_centroids", "PIXEL_UNIT"]

#: Resolution of the stored pixel distance (px per unit of the uint8 map).
PIXEL_UNIT = 0.25


def pixel_depth_map(frame: np.ndarray) -> np.ndarray:
    """uint8 distance (in :data:`PIXEL_UNIT` px) from each spot pixel to the nearest
    background pixel (0 on the background): how deep inside its spot a pixel lies."""
    frame = np.asarray(frame, dtype=bool)
    if not frame.any():
        return np.zeros(frame.shape, dtype=np.uint8)
    if frame.all():
        return np.full(frame.shape, 255, dtype=np.uint8)
    out = np.empty(frame.shape, dtype=np.uint8)
    _kernels.quantized_distance(np.ascontiguousarray(~frame), PIXEL_UNIT, out)
    return out


def pixel_distance_map(frame: np.ndarray) -> np.ndarray:
    """uint8 distance (in :data:`PIXEL_UNIT` px) from each pixel to the nearest spot pixel.

    Parameters
    ----------
    frame : ndarray of bool, shape (H, W)

    Returns
    -------
    ndarray of uint8, shape (H, W)
        255 everywhere when the frame has no spot pixel.
    """
    frame = np.asarray(frame, dtype=bool)
    if not frame.any():
        return np.full(frame.shape, 255, dtype=np.uint8)
    out = np.empty(frame.shape, dtype=np.uint8)
    _kernels.quantized_distance(np.ascontiguousarray(frame), PIXEL_UNIT, out)
    return out


@dataclass
class HitMaps:
    """Distance maps of every frame (see the module docstring).

    Attributes
    ----------
    pixel : ndarray of uint8, shape (n, H, W)
        Pixel distance maps, in :data:`PIXEL_UNIT` px.
    depth : ndarray of uint8, shape (n, H, W), or None
        Depth of each spot pixel inside its spot, in :data:`PIXEL_UNIT` px (only when
        asked for: the optional tie-break of the voxel assignment uses it).
    polar : ndarray of uint8, shape (n, n_tt, n_eta)
        Polar direction maps, in ``polar_unit`` degrees of scattering-vector angle.
    tt_step, eta_step : float
        Cell size of the polar maps in 2θ and η (degrees); 2θ starts at 0, η at -180°.
    polar_unit : float
        Degrees per unit of ``polar``.
    spots : ndarray, shape (N, 3), or None
        Centroid of every segmented spot (8-connected region): frame, row, column; the
        spot-pair indexing (:mod:`.spotindex`) starts from them.
    """

    pixel: np.ndarray
    depth: np.ndarray | None
    polar: np.ndarray
    tt_step: float
    eta_step: float
    polar_unit: float
    spots: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        """Memory held by the maps (bytes)."""
        depth = 0 if self.depth is None else self.depth.nbytes
        return int(self.pixel.nbytes + depth + self.polar.nbytes)


def _pixel_directions(geometry: Geometry, rows: np.ndarray, cols: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(2θ, η) in degrees of detector positions seen from the origin."""
    q = geometry.pixel_to_lab(rows, cols)
    qn = np.linalg.norm(q, axis=-1)
    tt = np.degrees(np.arccos(np.clip(q[..., 0] / qn, -1, 1)))
    eta = np.degrees(np.arctan2(-q[..., 1], q[..., 2]))
    return tt, eta


def spot_centroids(frame: np.ndarray) -> np.ndarray:
    """(row, col) centroids (K, 2) of the 8-connected spots of a binary frame."""
    labels, n = ndimage.label(frame, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros((0, 2))
    rr, cc = np.nonzero(labels)
    lab = labels[rr, cc]
    size = np.bincount(lab, minlength=n + 1)[1:]
    row = np.bincount(lab, weights=rr, minlength=n + 1)[1:] / size
    col = np.bincount(lab, weights=cc, minlength=n + 1)[1:] / size
    return np.stack([row, col], axis=1)


def _polar_occupancy(frame: np.ndarray, geometry: Geometry, n_tt: int, n_eta: int,
                     tt_step: float, eta_step: float) -> np.ndarray:
    rr, cc = np.nonzero(frame)
    occ = np.zeros((n_tt, n_eta), dtype=bool)
    if rr.size == 0:
        return occ
    # Enough sub-samples per pixel that a pixel's footprint in (2θ, η) has no holes.
    tt, _ = _pixel_directions(geometry, rr.astype(float), cc.astype(float))
    radius_mm = geometry.lsd * np.tan(np.radians(max(float(tt.min()), 0.05)))
    pixel_eta_deg = np.degrees(geometry.pixel_size / radius_mm)
    pixel_tt_deg = np.degrees(geometry.pixel_size / geometry.lsd)
    n_sub = int(np.clip(np.ceil(max(pixel_eta_deg / eta_step, pixel_tt_deg / tt_step)), 1, 9))
    offsets = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    dr, dc = (a.ravel() for a in np.meshgrid(offsets, offsets, indexing="ij"))
    tt, eta = _pixel_directions(geometry, rr[:, None] + dr[None, :], cc[:, None] + dc[None, :])
    it = (tt / tt_step).astype(np.int64).ravel()
    ie = (((eta + 180.0) / eta_step).astype(np.int64) % n_eta).ravel()
    keep = it < n_tt
    occ[it[keep], ie[keep]] = True
    return occ


class HitMapBuilder:
    """Distance maps computed one frame at a time, as frames arrive.

    The live grain map (:mod:`labdct_live.callbacks.live_grainmap`) adds each binary frame as
    the processor finishes it, so that an update of the map, and the reconstruction at the
    end of the scan, find every frame's maps ready. :func:`build_hit_maps` is this builder
    run over a stack.

    Parameters
    ----------
    geometry : Geometry
        The frames' geometry (its ``detector_shape`` is the frames' shape).
    tt_step, eta_step, polar_unit, depth
        As :func:`build_hit_maps`.

    Examples
    --------
    >>> geometry = Geometry().binned((64, 64))
    >>> builder = HitMapBuilder(geometry)
    >>> frame = np.zeros((64, 64), bool)
    >>> frame[10, 20] = True
    >>> builder.add(7, frame)
    >>> maps = builder.stack([7])
    >>> maps.pixel.shape, int(maps.pixel[0, 10, 23]) * PIXEL_UNIT, maps.spots.tolist()
    ((1, 64, 64), 3.0, [[0.0, 10.0, 20.0]])
    """

    def __init__(self, geometry: Geometry, *, tt_step: float = 0.1, eta_step: float = 0.2,
                 polar_unit: float = 0.02, depth: bool = False) -> None:
        self.geometry = geometry
        self.n_tt = int(np.ceil((geometry.max_two_theta() + 1.0) / tt_step))
        self.n_eta = int(round(360.0 / eta_step))
        self.tt_step = float(tt_step)
        self.eta_step = 360.0 / self.n_eta
        self.polar_unit = float(polar_unit)
        self.depth = bool(depth)
        self._pad = int(np.ceil(254 * polar_unit / self.eta_step)) + 1
        self._frames: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self._frames)

    def __contains__(self, key: int) -> bool:
        return key in self._frames

    def add(self, key: int, frame: np.ndarray) -> None:
        """Compute the maps of one binary frame and keep them under ``key`` (replacing any)."""
        frame = np.asarray(frame, dtype=bool)
        if frame.shape != tuple(self.geometry.detector_shape):
            raise ValueError(f"frame of shape {frame.shape}, but the geometry's detector is "
                             f"{tuple(self.geometry.detector_shape)}")
        pixel = pixel_distance_map(frame)
        depth = pixel_depth_map(frame) if self.depth else None
        occ = _polar_occupancy(frame, self.geometry, self.n_tt, self.n_eta, self.tt_step,
                               self.eta_step)
        if occ.any():
            pad = self._pad
            wrapped = np.concatenate([occ[:, -pad:], occ, occ[:, :pad]], axis=1)
            d = ndimage.distance_transform_edt(~wrapped, sampling=(self.tt_step / 2.0,
                                                                   self.eta_step))
            polar = np.minimum(np.rint(d[:, pad:pad + self.n_eta] / self.polar_unit),
                               255).astype(np.uint8)
        else:
            polar = np.full((self.n_tt, self.n_eta), 255, dtype=np.uint8)
        self._frames[int(key)] = (pixel, depth, polar, spot_centroids(frame))

    def stack(self, keys) -> HitMaps:
        """The :class:`HitMaps` of the frames ``keys``, in that order (spot frame numbers
        are positions in ``keys``)."""
        keys = [int(k) for k in keys]
        missing = [k for k in keys if k not in self._frames]
        if missing:
            raise KeyError(f"no maps for frames {missing[:5]}")
        entries = [self._frames[k] for k in keys]
        shape = tuple(self.geometry.detector_shape)
        pixel = np.stack([e[0] for e in entries]) if entries else np.zeros((0, *shape),
                                                                            np.uint8)
        depth = np.stack([e[1] for e in entries]) if self.depth and entries else None
        polar = (np.stack([e[2] for e in entries]) if entries
                 else np.zeros((0, self.n_tt, self.n_eta), np.uint8))
        spots = [np.concatenate([np.full((len(e[3]), 1), float(i)), e[3]], axis=1)
                 for i, e in enumerate(entries)]
        return HitMaps(pixel=pixel, depth=depth, polar=polar, tt_step=self.tt_step,
                       eta_step=self.eta_step, polar_unit=self.polar_unit,
                       spots=np.concatenate(spots) if spots else np.zeros((0, 3)))


def build_hit_maps(frames: np.ndarray, geometry: Geometry, *, tt_step: float = 0.1,
                   eta_step: float = 0.2, polar_unit: float = 0.02, depth: bool = False,
                   progress: bool = False) -> HitMaps:
    """Pixel and polar distance maps of a stack of binary frames.

    Parameters
    ----------
    frames : ndarray of bool, shape (n, H, W)
    geometry : Geometry
    tt_step, eta_step : float
        Polar cell size in 2θ and η (degrees).
    polar_unit : float
        Degrees of scattering-vector angle per unit of the uint8 polar map; the largest
        distance stored is 254 units (255 = farther).
    depth : bool
        Also compute the depth maps.
    progress : bool
        Show a progress bar.

    Returns
    -------
    HitMaps
    """
    from tqdm.auto import tqdm

    builder = HitMapBuilder(geometry, tt_step=tt_step, eta_step=eta_step,
                            polar_unit=polar_unit, depth=depth)
    for k in tqdm(range(len(frames)), desc="distance maps", unit="frame",
                  disable=not progress):
        builder.add(k, frames[k])
    return builder.stack(range(len(frames)))
