"""The input of a reconstruction: binary frames, their ω, the geometry, the material and the
sample envelope, checked once so that every later step can trust them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from labdct_live.simulation.crystal import Material, MaterialError, get_material
from labdct_live.simulation.geometry import Geometry

__all__ = ["ReconstructionError", "ScanData", "SampleEnvelope", "bin_frames"]


class ReconstructionError(ValueError):
    """Input a reconstruction cannot use; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class SampleEnvelope:
    """The cylinder that holds the sample (docs/physics.md §5), or an explicit voxel mask.

    Parameters
    ----------
    diameter, height : float
        Cylinder size (mm), axis z, centred on the origin.
    mask : ndarray of bool, shape (Z, Y, X), optional
        Voxels that belong to the sample (e.g. from an absorption-CT volume) on the grid of
        the reconstruction; the cylinder is used when None.
    """

    diameter: float
    height: float
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("diameter", "height"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ReconstructionError(f"sample {name} must be a positive length in mm, "
                                          f"got {value!r}")

    def grid(self, voxel_size: float) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
        """Shape (Z, Y, X), origin (x, y, z of voxel 0, mm) and mask of the voxel grid.

        The grid is that of :func:`labdct_live.simulation.scanfolder.grainmap_of`: ``ceil(D / v)``
        voxels across, ``ceil(H / v)`` high, centred on the origin.
        """
        nx = ny = int(np.ceil(self.diameter / voxel_size - 1e-9))
        nz = int(np.ceil(self.height / voxel_size - 1e-9))
        origin = -0.5 * voxel_size * (np.array([nx, ny, nz]) - 1)
        if self.mask is not None:
            mask = np.asarray(self.mask, dtype=bool)
            if mask.shape != (nz, ny, nx):
                raise ReconstructionError(
                    f"the sample mask has shape {mask.shape}, but a {self.diameter} x "
                    f"{self.height} mm sample at {voxel_size} mm voxels needs {(nz, ny, nx)}")
            return (nz, ny, nx), origin, mask
        x = origin[0] + voxel_size * np.arange(nx)
        y = origin[1] + voxel_size * np.arange(ny)
        disc = (x[None, :] ** 2 + y[:, None] ** 2) <= (self.diameter / 2) ** 2
        mask = np.broadcast_to(disc, (nz, ny, nx)).copy()
        return (nz, ny, nx), origin, mask


@dataclass
class ScanData:
    """Binary frames of one scan with everything needed to predict their spots.

    Parameters
    ----------
    frames : ndarray of bool, shape (n, H, W)
        Segmented frames (True = spot pixel), in acquisition order.
    omegas : ndarray, shape (n,)
        Rotation angle of each frame (degrees).
    geometry : Geometry
        The acquisition geometry; its ``detector_shape`` must be the frames' (H, W).
    material : Material or str
        The sample's material (hkl families, lattice); ``"Al"``, ``"Fe"`` or a Material.
    envelope : SampleEnvelope
        Where the sample is.
    e_min : float
        Lower end of the useful energy band (keV); the upper end is ``geometry.kvp - 2``.
    source : str
        Where the data came from (for messages and the output's metadata).
    extra : dict
        Anything a reader wants to pass on (e.g. the simulated scan's voxel size).

    Raises
    ------
    ReconstructionError
        No frames, no spot pixel at all, frames and ω of different lengths, frames of another
        shape than the detector, or no material.
    """

    frames: np.ndarray
    omegas: np.ndarray
    geometry: Geometry
    material: Material | str | None
    envelope: SampleEnvelope
    e_min: float = 13.0
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        frames = np.asarray(self.frames)
        if frames.ndim == 2:
            frames = frames[None]
        if frames.ndim != 3 or frames.shape[0] == 0:
            raise ReconstructionError(
                f"frames must be a stack (n, rows, cols) of at least one frame, got shape "
                f"{frames.shape}")
        self.frames = frames if frames.dtype == bool else frames > 0
        omegas = np.asarray(self.omegas, dtype=float).ravel()
        if len(omegas) != len(self.frames):
            raise ReconstructionError(
                f"{len(self.frames)} frames but {len(omegas)} rotation angles: give one ω "
                "per frame")
        if not np.all(np.isfinite(omegas)):
            raise ReconstructionError("the rotation angles ω must be finite numbers")
        self.omegas = omegas
        if self.material is None or (isinstance(self.material, str) and not self.material):
            raise ReconstructionError(
                "no material: give the sample's material (e.g. 'Al' or 'Fe') so that its "
                "hkl families and lattice are known")
        try:
            self.material = get_material(self.material)
        except MaterialError as exc:
            raise ReconstructionError(str(exc)) from None
        if tuple(self.frames.shape[1:]) != tuple(self.geometry.detector_shape):
            raise ReconstructionError(
                f"the frames are {self.frames.shape[1]}x{self.frames.shape[2]} pixels but the "
                f"geometry's detector is {self.geometry.detector_shape[0]}x"
                f"{self.geometry.detector_shape[1]}")
        counts = self.frames.reshape(len(self.frames), -1).sum(axis=1)
        if counts.sum() == 0:
            raise ReconstructionError(
                f"no spots: none of the {len(self.frames)} binary frames"
                f"{' of ' + self.source if self.source else ''} has a segmented pixel")
        if not self.geometry.kvp - 2 > self.e_min:
            raise ReconstructionError(
                f"empty energy band: e_min = {self.e_min} keV is not below kvp - 2 = "
                f"{self.geometry.kvp - 2} keV")

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return len(self.frames)

    @property
    def e_max(self) -> float:
        """Upper end of the useful energy band (keV): ``kvp - 2``."""
        return float(self.geometry.kvp - 2.0)

    def spot_pixels_per_frame(self) -> np.ndarray:
        """Segmented pixels in each frame."""
        return self.frames.reshape(self.n_frames, -1).sum(axis=1)


def bin_frames(frames: np.ndarray, factor: int) -> np.ndarray:
    """Bin binary frames ``factor`` x ``factor`` by OR: a binned pixel is a spot pixel when
    any of its pixels is (a spot keeps its extent; nothing faint is averaged away).

    Parameters
    ----------
    frames : ndarray of bool, shape (n, H, W)
        Binary frames; H and W must be multiples of ``factor``.
    factor : int
        Binning factor (1 returns the frames).

    Returns
    -------
    ndarray of bool, shape (n, H // factor, W // factor)

    Raises
    ------
    ReconstructionError
        ``factor`` is below 1 or does not divide the frames' rows and columns.
    """
    frames = np.asarray(frames, dtype=bool)
    n, rows, cols = frames.shape
    if factor < 1 or rows % factor or cols % factor:
        raise ReconstructionError(
            f"cannot bin {rows}x{cols} frames by {factor}: the factor must be a positive "
            "divisor of both dimensions")
    if factor == 1:
        return frames
    return frames.reshape(n, rows // factor, factor, cols // factor, factor).any(axis=(2, 4))
