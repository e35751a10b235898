"""Virtual polycrystals: Voronoi (or Laguerre) grains in a cylinder with uniformly random
orientations.

Sample frame: the cylinder's axis is z (the rotation axis), its centre is the origin. The grain
volume is indexed ``[z, y, x]`` like the GrainMapper3D files it is written to; voxel ``(k, j, i)``
has its centre at ``(x, y, z) = origin + (i, j, k) * voxel_size`` with the volume centred on 0.

Orientations are orientation matrices ``U`` that take crystal coordinates to sample coordinates
(``G_sample = U @ B @ hkl``; the MTEX convention), drawn uniformly on SO(3) (Haar measure).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from labdct_live.simulation.crystal import Material, get_material

__all__ = ["SampleSpec", "Sample", "SampleError", "make_sample", "hard_core_seeds",
           "cell_tree", "random_orientations", "single_crystal_sample"]

logger = logging.getLogger(__name__)

#: Laguerre weights are (this x mean grain size x seed radius)²; measured to make the SD/mean
#: of the grain diameters close to ``size_spread`` (0.26-0.28 for 0.3 in D18 and D35).
_WEIGHT_SCALE = 0.5


class SampleError(ValueError):
    """A sample specification that cannot be built; the message names the parameter."""


@dataclass(frozen=True)
class SampleSpec:
    """What virtual sample to build.

    Parameters
    ----------
    material : str
        ``"Al"`` or ``"Fe"`` (see :data:`labdct_live.simulation.crystal.MATERIALS`).
    diameter, height : float
        Cylinder size (mm).
    n_grains : int or None
        Number of grains; derived from ``mean_grain_size`` when None.
    mean_grain_size : float or None
        Target equivalent-sphere diameter (mm); used when ``n_grains`` is None, and to set the
        default seed spacing and voxel size.
    min_seed_spacing : float or None
        Hard-core distance between Voronoi seeds (mm); half the mean grain size when None.
    voxel_size : float or None
        Edge of the voxels of the grain map, which are also the sub-cells the simulator traces
        (mm, at most 0.010); a seventh of the mean grain size, within 2-10 µm, when None.
    size_spread : float
        0 (default): Voronoi cells, whose sizes are nearly uniform (SD/mean of the diameters
        about 0.1). Above 0: a Laguerre (power) tessellation whose seeds carry log-normal
        radii with this coefficient of variation, packed so that no two seeds are closer
        than the sum of their radii (in units of half the seed spacing) and each seed lies
        in its own cell; the SD/mean of the grain diameters is then close to this value
        (0.26-0.28 for 0.3; see :func:`hard_core_seeds` and :func:`cell_tree`).
    name : str
        A label, e.g. the preset's name.
    """

    material: str = "Al"
    diameter: float = 0.200
    height: float = 0.300
    n_grains: int | None = 337
    mean_grain_size: float | None = None
    min_seed_spacing: float | None = None
    voxel_size: float | None = None
    size_spread: float = 0.0
    name: str = "custom"

    def __post_init__(self) -> None:
        get_material(self.material)  # raises MaterialError naming the material
        for field_name in ("diameter", "height"):
            value = getattr(self, field_name)
            if not (np.isfinite(value) and value > 0):
                raise SampleError(f"{field_name} must be a positive length in mm, got {value!r}")
        if self.n_grains is None and self.mean_grain_size is None:
            raise SampleError("give n_grains or mean_grain_size")
        if self.n_grains is not None and int(self.n_grains) < 1:
            raise SampleError(f"n_grains must be at least 1, got {self.n_grains!r}")
        if self.mean_grain_size is not None:
            if not self.mean_grain_size > 0:
                raise SampleError(
                    f"mean_grain_size must be positive (mm), got {self.mean_grain_size!r}"
                )
            if self.mean_grain_size > min(self.diameter, self.height):
                raise SampleError(
                    f"mean_grain_size {self.mean_grain_size} mm is larger than the sample "
                    f"({self.diameter} x {self.height} mm): grains must fit in the sample"
                )
        if self.voxel_size is not None and not 0 < self.voxel_size <= 0.010:
            raise SampleError(
                f"voxel_size must be in (0, 0.010] mm (sub-cells of at most 10 µm keep Laue "
                f"focusing), got {self.voxel_size!r}"
            )
        if self.min_seed_spacing is not None and self.min_seed_spacing < 0:
            raise SampleError(f"min_seed_spacing must be >= 0, got {self.min_seed_spacing!r}")
        if not (np.isfinite(self.size_spread) and 0 <= self.size_spread <= 1):
            raise SampleError(f"size_spread must be in [0, 1], got {self.size_spread!r}")

    @property
    def volume(self) -> float:
        return np.pi * (self.diameter / 2) ** 2 * self.height

    @property
    def grain_count(self) -> int:
        if self.n_grains is not None:
            return int(self.n_grains)
        return max(1, int(round(self.volume / (np.pi / 6 * self.mean_grain_size**3))))

    @property
    def typical_grain_size(self) -> float:
        """Equivalent-sphere diameter of the mean grain volume (mm)."""
        if self.mean_grain_size is not None:
            return float(self.mean_grain_size)
        return float((6 * self.volume / (np.pi * self.grain_count)) ** (1 / 3))

    @property
    def resolved_voxel_size(self) -> float:
        if self.voxel_size is not None:
            return float(self.voxel_size)
        return float(np.clip(self.typical_grain_size / 7, 0.002, 0.010))

    @property
    def resolved_seed_spacing(self) -> float:
        if self.min_seed_spacing is not None:
            return float(self.min_seed_spacing)
        return 0.5 * self.typical_grain_size

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Sample:
    """A voxelised virtual polycrystal.

    Attributes
    ----------
    spec : SampleSpec
    material : Material
    grain_ids : ndarray of int32, shape (nz, ny, nx)
        0 outside the cylinder, grain id (1..n) inside.
    voxel_size : float
        mm.
    origin : ndarray, shape (3,)
        ``(x, y, z)`` of the centre of voxel ``[0, 0, 0]`` (mm).
    orientations : ndarray, shape (n + 1, 3, 3)
        ``U`` per grain id; row 0 (no grain) is the identity.
    grains : pandas.DataFrame
        One row per grain: grain_id, x, y, z (centroid, mm), n_voxels, volume (mm³),
        diameter (equivalent sphere, mm), phi1, Phi, phi2 (Bunge Euler, degrees).
    seed : int or None
    """

    spec: SampleSpec
    material: Material
    grain_ids: np.ndarray
    voxel_size: float
    origin: np.ndarray
    orientations: np.ndarray
    grains: pd.DataFrame
    seed: int | None = None

    @property
    def n_grains(self) -> int:
        return len(self.grains)

    def voxel_centers(self) -> tuple[np.ndarray, np.ndarray]:
        """Centres ``(n, 3)`` (x, y, z in mm) and grain ids of all voxels inside grains."""
        kk, jj, ii = np.nonzero(self.grain_ids)
        xyz = self.origin + np.stack([ii, jj, kk], axis=1) * self.voxel_size
        return xyz, self.grain_ids[kk, jj, ii]

    def euler_bunge(self) -> np.ndarray:
        """Bunge ZXZ Euler angles (radians) per grain id, shape ``(n + 1, 3)``."""
        return Rotation.from_matrix(self.orientations).as_euler("ZXZ")


def hard_core_seeds(
    n: int, diameter: float, height: float, spacing: float, rng: np.random.Generator,
    max_tries: int = 200, radii: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """``n`` random points in a cylinder, no two closer than ``spacing`` (mm).

    With ``radii`` (one per point, mean 1), points ``i`` and ``j`` keep
    ``spacing * (radii[i] + radii[j]) / 2`` apart instead, and are placed in the given order
    (largest first places best). With Laguerre ``weights`` (mm²) they also keep
    ``|p_i - p_j|² > |w_i - w_j|``, so that every seed lies in its own cell and no cell is
    empty. Random sequential addition, batch-vectorised. Raises :class:`SampleError` when the
    cylinder cannot hold that many points at that spacing.
    """
    radius = diameter / 2
    half = 0.5 * spacing * (np.ones(n) if radii is None else np.asarray(radii, float))
    w = np.zeros(n) if weights is None else np.asarray(weights, float)
    points = np.empty((0, 3))
    for _ in range(max_tries):
        need = n - len(points)
        if need == 0:
            return points
        batch = max(4 * need, 64)
        r = radius * np.sqrt(rng.random(batch))
        phi = 2 * np.pi * rng.random(batch)
        cand = np.column_stack([r * np.cos(phi), r * np.sin(phi),
                                (rng.random(batch) - 0.5) * height])
        for p in cand:  # accept one by one: later candidates must respect earlier ones
            k = len(points)
            if k == n:
                break
            if k == 0:
                points = p[None]
                continue
            d2 = np.sum((points - p) ** 2, axis=1)
            if np.all(d2 >= (half[:k] + half[k]) ** 2) and np.all(d2 > np.abs(w[:k] - w[k])):
                points = np.vstack([points, p])
    if len(points) < n:
        raise SampleError(
            f"could place only {len(points)} of {n} grain seeds {spacing * 1e3:.1f} µm apart in a "
            f"{diameter} x {height} mm cylinder: lower min_seed_spacing or n_grains"
        )
    return points


def cell_tree(seeds: np.ndarray, weights: np.ndarray | None = None) -> cKDTree:
    """A KD-tree whose nearest neighbour of a point is its Voronoi or Laguerre cell.

    Parameters
    ----------
    seeds : ndarray, shape (n, 3)
    weights : ndarray, shape (n,), optional
        Laguerre (power) weights (mm²): a point ``x`` belongs to the seed minimising
        ``|x - s_i|² - w_i``. That is the nearest neighbour of ``(x, 0)`` among the lifted
        seeds ``(s_i, sqrt(max(w) - w_i))``, so query the tree with a fourth coordinate 0
        (``tree.m`` is 4).

    Returns
    -------
    scipy.spatial.cKDTree
    """
    if weights is None:
        return cKDTree(seeds)
    weights = np.asarray(weights, float)
    return cKDTree(np.column_stack([seeds, np.sqrt(weights.max() - weights)]))


def _lognormal_radii(n: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` log-normal radii with mean 1 and coefficient of variation ``spread``."""
    sigma = np.sqrt(np.log1p(spread**2))
    return rng.lognormal(-0.5 * sigma**2, sigma, n)


def random_orientations(n: int, seed: int | np.random.Generator | None = None) -> np.ndarray:
    """``n`` orientation matrices drawn uniformly on SO(3) (Haar measure), shape (n, 3, 3).

    Uniform Euler angles (phi1, Phi, phi2) = (360u, 180u, 360u), as in the MATLAB forward
    model, are *not* uniform on SO(3); uniform unit quaternions are.
    """
    return Rotation.random(n, random_state=np.random.default_rng(seed)).as_matrix()


def single_crystal_sample(
    orientation: np.ndarray, material: str = "Al", size: float = 0.002,
    voxel_size: float | None = None, center: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> Sample:
    """One cubic grain of edge ``size`` (mm) centred at ``center`` with orientation ``U``.

    A calibration crystal: with one voxel (the default) it diffracts as a point.
    """
    voxel = float(voxel_size or size)
    n = max(1, int(round(size / voxel)))
    offset = voxel * (np.arange(n) - (n - 1) / 2)
    origin = np.asarray(center, dtype=float) + offset[0]
    half_extent = np.abs(np.asarray(center)[:2]).max() + size
    spec = SampleSpec(material, diameter=2 * half_extent * 1.01, height=2 * half_extent * 1.01,
                      n_grains=1, voxel_size=min(voxel, 0.010), name="single crystal")
    orientation = np.asarray(orientation, dtype=float).reshape(3, 3)
    euler = np.rad2deg(Rotation.from_matrix(orientation).as_euler("ZXZ")) % 360.0
    grains = pd.DataFrame({"grain_id": [1], "x": [center[0]], "y": [center[1]],
                           "z": [center[2]], "n_voxels": [n**3], "volume": [size**3],
                           "diameter": [(6 * size**3 / np.pi) ** (1 / 3)],
                           "phi1": [euler[0]], "Phi": [euler[1]], "phi2": [euler[2]]})
    return Sample(spec=spec, material=get_material(material),
                  grain_ids=np.ones((n, n, n), dtype=np.int32), voxel_size=voxel,
                  origin=origin, orientations=np.stack([np.eye(3), orientation]), grains=grains)


def make_sample(spec: SampleSpec, seed: int | np.random.Generator | None = None) -> Sample:
    """Build a voxelised Voronoi polycrystal from a :class:`SampleSpec`.

    Parameters
    ----------
    spec : SampleSpec
    seed : int or numpy.random.Generator, optional
        Same seed, same sample.

    Returns
    -------
    Sample
    """
    rng = np.random.default_rng(seed)
    material = get_material(spec.material)
    n = spec.grain_count
    voxel = spec.resolved_voxel_size
    if voxel > spec.typical_grain_size:
        raise SampleError(
            f"voxel_size {voxel} mm exceeds the grain size {spec.typical_grain_size:.4f} mm"
        )
    if spec.size_spread > 0:
        radii = np.sort(_lognormal_radii(n, spec.size_spread, rng))[::-1]
        weights = (_WEIGHT_SCALE * spec.typical_grain_size * radii) ** 2
        seeds = hard_core_seeds(n, spec.diameter, spec.height, spec.resolved_seed_spacing, rng,
                                radii=radii, weights=weights)
        tree = cell_tree(seeds, weights)
    else:
        seeds = hard_core_seeds(n, spec.diameter, spec.height, spec.resolved_seed_spacing, rng)
        tree = cell_tree(seeds)
    orientations = random_orientations(n, rng)

    nx = ny = int(np.ceil(spec.diameter / voxel))
    nz = int(np.ceil(spec.height / voxel))
    origin = -0.5 * voxel * (np.array([nx, ny, nz]) - 1)
    x = origin[0] + voxel * np.arange(nx)
    y = origin[1] + voxel * np.arange(ny)
    z = origin[2] + voxel * np.arange(nz)
    inside_disc = (x[None, :] ** 2 + y[:, None] ** 2) <= (spec.diameter / 2) ** 2  # (ny, nx)
    jj, ii = np.nonzero(inside_disc)
    grain_ids = np.zeros((nz, ny, nx), dtype=np.int32)
    for k in range(nz):  # slice by slice keeps memory flat for large samples
        pts = np.zeros((len(ii), tree.m))  # a 4th coordinate of 0 for Laguerre cells
        pts[:, 0], pts[:, 1], pts[:, 2] = x[ii], y[jj], z[k]
        _, nearest = tree.query(pts, workers=-1)
        grain_ids[k, jj, ii] = nearest + 1

    # Seeds whose cell missed every voxel centre are dropped; ids are made consecutive.
    counts = np.bincount(grain_ids.ravel(), minlength=n + 1)
    present = np.flatnonzero(counts[1:]) + 1
    if len(present) < n:
        logger.info("%d grains smaller than a voxel were dropped", n - len(present))
    relabel = np.zeros(n + 1, dtype=np.int32)
    relabel[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    grain_ids = relabel[grain_ids]
    orientations = np.concatenate([np.eye(3)[None], orientations[present - 1]])

    kk, jj, ii = np.nonzero(grain_ids)
    labels = grain_ids[kk, jj, ii]
    n_vox = np.bincount(labels, minlength=len(present) + 1)[1:]
    centroid = np.stack(
        [np.bincount(labels, weights=w, minlength=len(present) + 1)[1:] / n_vox
         for w in (x[ii], y[jj], z[kk])], axis=1)
    volume = n_vox * voxel**3
    euler = np.rad2deg(Rotation.from_matrix(orientations[1:]).as_euler("ZXZ")) % 360.0
    grains = pd.DataFrame({
        "grain_id": np.arange(1, len(present) + 1),
        "x": centroid[:, 0], "y": centroid[:, 1], "z": centroid[:, 2],
        "n_voxels": n_vox, "volume": volume,
        "diameter": (6 * volume / np.pi) ** (1 / 3),
        "phi1": euler[:, 0], "Phi": euler[:, 1], "phi2": euler[:, 2],
    })
    return Sample(spec=spec, material=material, grain_ids=grain_ids, voxel_size=voxel,
                  origin=origin, orientations=orientations, grains=grains,
                  seed=seed if isinstance(seed, (int, np.integer)) else None)
