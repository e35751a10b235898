"""Noisy training inputs and target images from simulated projections (docs/physics.md §6).

The seed paper's recipe (Eq. 1-2): from a simulated frame ``I_simu`` with constant background
``C_BG`` and a normalised background image ``I_BG``::

    x0 = (I_simu - C_BG) + R_BG · I_BG,     R_BG ~ U[I0 - sqrt(I0), I0 + sqrt(I0)]
    x  = x0 + tau · Poisson(x0 / 2)

so that ``E[x] = (1 + tau/2) x0`` and ``Var[x] = tau² x0 / 2``. Defaults ``I0 = 110`` (a
common background-pixel value of experimental frames) and ``tau = 1``.

**The beam stop.** The simulator's frame is 0 under the beam stop, so ``I_simu - C_BG`` would
be ``-C_BG`` there: negative counts, for which the Poisson term is undefined. We use the
simulator's ``clean`` image instead, which equals ``I_simu - C_BG`` outside the beam stop and
0 inside it; the beam stop then has ``x0 = R_BG · I_BG``, which is dark because every
background (procedural or extracted from real frames) is dark there, as in real frames.

**Intensity scale.** The spot image is multiplied by a per-pair factor ``scale`` chosen so
that the median predicted spot SNR of the pair is log-uniform in
:attr:`SynthesisConfig.median_snr_range`; the spread of spot intensities within a frame then
carries the per-spot SNR over the paper's range 0.1-28 (Fig. S1).

**Targets.** By default the spots of the *clean* image segmented with the LoG steps of the
standard routine (:func:`labdct_live.segmentation.routine.segment_corrected` with
:data:`TARGET_PARAMS`), as in the paper; optionally the simulator's own spot masks
(``labels > 0``). Targets are uint8 {0, 1} (written 0/255 as 8-bit images).

**Inputs.** Float32 counts ``x``; :func:`to_uint8` gives the paper's 8-bit input and
:func:`normalize_frame` the per-frame robust scaling that training and inference share
(defined in :mod:`labdct_live.segmentation.normalization`, re-exported here).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from labdct_live.io.frames import FrameReadError, check_frame
from labdct_live.segmentation.normalization import (
    NORMALIZE_PERCENTILES,
    normalization_stats,
    normalization_stride,
    normalize_frame,
)
from labdct_live.segmentation.routine import RoutineParams, segment_corrected
from labdct_live.simulation.background import beam_center_pixel
from labdct_live.simulation.geometry import NO_BEAMSTOP
from labdct_live.simulation.presets import preset

__all__ = [
    "SynthesisError",
    "TARGET_PARAMS",
    "NORMALIZE_PERCENTILES",
    "draw_r_bg",
    "compose_clean_input",
    "add_noise",
    "synthesize_input",
    "spot_signal",
    "log_target",
    "label_target",
    "make_target",
    "spot_statistics",
    "predicted_snr",
    "scale_for_median_snr",
    "normalization_stats",
    "normalization_stride",
    "normalize_frame",
    "to_uint8",
    "SynthesisConfig",
    "Pair",
    "make_pair",
    "random_acquisition",
]

#: LoG segmentation of the noise-free spot image for targets: no background offset (the
#: image is 0 away from spots; a positive offset would make targets depend on the intensity
#: scale), SD 1 px, 10 % of each component's maximum, at least 4 px. The public-code values
#: (sigma 6, min size 10) are for noisy, median-subtracted frames and give targets twice the
#: spots' area on clean images.
TARGET_PARAMS = RoutineParams(background=0.0, sigma=1.0, percent=0.10, min_size=4)

_TARGET_KINDS = ("log", "labels")


class SynthesisError(ValueError):
    """Invalid input to training-pair synthesis; the message names the parameter."""


# ------------------------------------------------------------------------ Eq. 1-2 pieces
def _check_image(image, name: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool:  # masks and label images are images here
        image = image.view(np.uint8)
    try:
        return check_frame(image, name, shape)
    except FrameReadError as exc:
        raise SynthesisError(str(exc)) from exc


def _check_i0_tau(i0: float, tau: float) -> None:
    if not (np.isfinite(i0) and i0 >= 1):
        raise SynthesisError(f"i0 must be >= 1 count (R_BG >= 0 needs I0 >= sqrt(I0)), got {i0!r}")
    if not (np.isfinite(tau) and tau >= 0):
        raise SynthesisError(f"tau must be a finite number >= 0, got {tau!r}")


def draw_r_bg(i0: float = 110.0, rng: np.random.Generator | int | None = None) -> float:
    """Background amplitude ``R_BG ~ U[I0 - sqrt(I0), I0 + sqrt(I0)]`` (Eq. 1)."""
    _check_i0_tau(i0, 0.0)
    rng = np.random.default_rng(rng)
    half = np.sqrt(i0)
    return float(rng.uniform(i0 - half, i0 + half))


def compose_clean_input(
    spots: np.ndarray, background: np.ndarray, r_bg: float, scale: float = 1.0
) -> np.ndarray:
    """Noise-free input ``x0 = scale · spots + r_bg · background`` (Eq. 1).

    Parameters
    ----------
    spots : (M, N) array
        Spot intensity above the constant background (``I_simu - C_BG``, 0 in the beam stop;
        the simulator's ``clean``), >= 0.
    background : (M, N) array
        Normalised background image ``I_BG`` in [0, 1].
    r_bg : float
        Background amplitude (counts).
    scale : float
        Factor on the spot intensity.

    Returns
    -------
    ndarray of float32
    """
    spots = _check_image(spots, "spots")
    background = _check_image(background, "background", spots.shape)
    if not (np.isfinite(r_bg) and r_bg >= 0):
        raise SynthesisError(f"r_bg must be a count >= 0, got {r_bg!r}")
    if not (np.isfinite(scale) and scale >= 0):
        raise SynthesisError(f"scale must be >= 0, got {scale!r}")
    x0 = np.multiply(spots, np.float32(scale), dtype=np.float32)
    x0 += np.float32(r_bg) * background.astype(np.float32, copy=False)
    if x0.min() < 0:
        raise SynthesisError(
            "spots + r_bg * background has negative pixels; spots must be >= 0 (use "
            "spot_signal() on raw simulated frames) and background in [0, 1]"
        )
    return x0


def add_noise(x0: np.ndarray, tau: float = 1.0, rng: np.random.Generator | int | None = None
              ) -> np.ndarray:
    """``x = x0 + tau · Poisson(x0 / 2)`` (Eq. 2): mean ``(1 + tau/2) x0``, variance ``tau² x0/2``.

    Parameters
    ----------
    x0 : array, >= 0
    tau : float
        Noise strength, >= 0.
    rng : Generator, int or None

    Returns
    -------
    ndarray of float32, same shape
    """
    _check_i0_tau(1.0, tau)
    x0 = np.asarray(x0, dtype=np.float32)
    if x0.size and (not np.isfinite(x0).all() or x0.min() < 0):
        raise SynthesisError("x0 must be finite and >= 0 (Poisson means cannot be negative)")
    rng = np.random.default_rng(rng)
    noise = rng.poisson(x0 * np.float32(0.5)).astype(np.float32)
    noise *= np.float32(tau)
    noise += x0
    return noise


def synthesize_input(
    spots: np.ndarray,
    background: np.ndarray,
    *,
    i0: float = 110.0,
    tau: float = 1.0,
    scale: float = 1.0,
    r_bg: float | None = None,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, float]:
    """A noisy input image by Eq. 1-2.

    Parameters
    ----------
    spots, background : (M, N) arrays
        See :func:`compose_clean_input`.
    i0, tau : float
        Typical background counts and noise strength (paper: 110 and 1).
    scale : float
        Factor on the spot intensity.
    r_bg : float or None
        Background amplitude; drawn from ``U[i0 - sqrt(i0), i0 + sqrt(i0)]`` when None.
    rng : Generator, int or None

    Returns
    -------
    x : ndarray of float32
        The noisy input (counts).
    r_bg : float
        The background amplitude used.
    """
    _check_i0_tau(i0, tau)
    rng = np.random.default_rng(rng)
    if r_bg is None:
        r_bg = draw_r_bg(i0, rng)
    x0 = compose_clean_input(spots, background, r_bg, scale)
    return add_noise(x0, tau, rng), float(r_bg)


def spot_signal(frame: np.ndarray, background_level: float,
                beamstop: np.ndarray | None = None) -> np.ndarray:
    """``I_simu - C_BG`` of a raw simulated frame, clipped at 0 and 0 in the beam stop.

    Use it when only the uint16 frames of a simulation are at hand (``truth.h5`` holds the
    ``clean`` image directly).
    """
    frame = _check_image(frame, "frame")
    out = frame.astype(np.float32) - np.float32(background_level)
    np.maximum(out, 0, out=out)
    if beamstop is not None:
        out[_check_image(beamstop, "beamstop", frame.shape).astype(bool)] = 0
    return out


# ------------------------------------------------------------------------------ targets
def log_target(clean: np.ndarray, exclude: np.ndarray | None = None,
               params: RoutineParams = TARGET_PARAMS) -> np.ndarray:
    """Target mask: spots of the noise-free image by the LoG steps of the standard routine.

    Parameters
    ----------
    clean : (M, N) array
        Noise-free spot image (counts above background).
    exclude : (M, N) bool array, optional
        Pixels that are never spots (the beam stop).
    params : RoutineParams
        ``background``, ``sigma``, ``percent`` and ``min_size`` are used.

    Returns
    -------
    ndarray of uint8 {0, 1}
    """
    clean = _check_image(clean, "clean")
    mask, _ = segment_corrected(clean, params, exclude)
    return mask


def label_target(labels: np.ndarray) -> np.ndarray:
    """Target mask from the simulator's spot labels: ``labels > 0`` as uint8 {0, 1}."""
    labels = _check_image(labels, "labels")
    return (labels > 0).astype(np.uint8)


def make_target(kind: str, clean: np.ndarray, labels: np.ndarray | None = None,
                exclude: np.ndarray | None = None,
                params: RoutineParams = TARGET_PARAMS) -> np.ndarray:
    """Target mask of kind ``"log"`` (:func:`log_target`) or ``"labels"`` (:func:`label_target`)."""
    if kind == "log":
        return log_target(clean, exclude, params)
    if kind == "labels":
        if labels is None:
            raise SynthesisError('target kind "labels" needs the labels image')
        return label_target(labels)
    raise SynthesisError(f"unknown target kind {kind!r}; choose one of {_TARGET_KINDS}")


# ------------------------------------------------------------------- SNR and scaling
def spot_statistics(clean: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-spot mean intensity, pixel count and centroid from a clean image and its labels.

    Returns
    -------
    dict
        ``label`` (int32), ``mean`` (float32 mean clean intensity over the spot's pixels),
        ``n_pixels`` (int32), ``row``, ``col`` (float32 centroids), for every label present.
    """
    clean = _check_image(clean, "clean")
    labels = _check_image(labels, "labels", clean.shape)
    if labels.dtype.kind not in "iu":
        raise SynthesisError(f"labels must be an integer image, got {labels.dtype}")
    flat = labels.ravel()
    where = np.flatnonzero(flat > 0)
    ids, inverse = np.unique(flat[where], return_inverse=True)
    n = np.bincount(inverse, minlength=ids.size)
    rows, cols = np.divmod(where, labels.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(inverse, clean.ravel()[where], minlength=ids.size) / n
        row = np.bincount(inverse, rows, minlength=ids.size) / n
        col = np.bincount(inverse, cols, minlength=ids.size) / n
    return {"label": ids.astype(np.int32), "mean": mean.astype(np.float32),
            "n_pixels": n.astype(np.int32), "row": row.astype(np.float32),
            "col": col.astype(np.float32)}


def predicted_snr(spot_mean: np.ndarray, local_background: np.ndarray, r_bg: float,
                  tau: float, scale: float = 1.0) -> np.ndarray:
    """Expected spot SNR (§8) of Eq. 1-2 inputs, in closed form.

    A background pixel has ``x0 = r_bg · I_BG``, so its SD is ``tau · sqrt(x0 / 2)``, and a
    spot's mean lies ``(1 + tau/2) · scale · spot_mean`` above the background mean:
    ``SNR = (1 + tau/2) · scale · spot_mean / (tau · sqrt(r_bg · I_BG / 2))``.
    Spot tails outside the spot mask are ignored, so measured SNRs come out slightly lower.
    """
    sd = tau * np.sqrt(np.maximum(r_bg * np.asarray(local_background, float), 1e-6) / 2)
    with np.errstate(divide="ignore"):
        return (1 + tau / 2) * scale * np.asarray(spot_mean, float) / sd


def scale_for_median_snr(target: float, spot_mean: np.ndarray, local_background: np.ndarray,
                         r_bg: float, tau: float) -> float:
    """The intensity scale that puts the median :func:`predicted_snr` of the spots at ``target``."""
    if tau == 0:
        return 1.0  # noise-free: SNR is infinite whatever the scale
    unit = predicted_snr(spot_mean, local_background, r_bg, tau, 1.0)
    unit = unit[np.isfinite(unit) & (unit > 0)]
    if unit.size == 0:
        return 1.0
    return float(target / np.median(unit))


def to_uint8(x: np.ndarray) -> np.ndarray:
    """The paper's 8-bit input: counts rounded and clipped to 0..255.

    With ``I0 = 110`` the background sits mid-range and spots up to ~145 counts above it
    keep their contrast; brighter pixels saturate, as in the paper's 8-bit images.
    """
    x = np.asarray(x)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# -------------------------------------------------------------------------------- pairs
@dataclass(frozen=True)
class SynthesisConfig:
    """How inputs and targets are made from a simulated projection.

    Parameters
    ----------
    i0 : float
        Typical background counts (Eq. 1; paper 110).
    tau : float
        Noise strength (Eq. 2; paper 1).
    median_snr_range : (float, float)
        The median predicted spot SNR of a pair is drawn log-uniformly in this range (the
        intensity scale follows); the spread within frames then spans about 0.1-28.
    target : str
        ``"log"`` (LoG of the clean image, the paper's) or ``"labels"`` (simulator masks).
    target_params : RoutineParams
        LoG parameters for ``"log"`` targets.
    """

    i0: float = 110.0
    tau: float = 1.0
    median_snr_range: tuple[float, float] = (0.7, 6.0)
    target: str = "log"
    target_params: RoutineParams = field(default=TARGET_PARAMS)

    def __post_init__(self) -> None:
        _check_i0_tau(self.i0, self.tau)
        lo, hi = self.median_snr_range
        if not 0 < lo <= hi:
            raise SynthesisError(
                f"median_snr_range must be (low, high) with 0 < low <= high, got "
                f"{self.median_snr_range!r}")
        object.__setattr__(self, "median_snr_range", (float(lo), float(hi)))
        if self.target not in _TARGET_KINDS:
            raise SynthesisError(f"target must be one of {_TARGET_KINDS}, got {self.target!r}")

    def draw_median_snr(self, rng: np.random.Generator) -> float:
        lo, hi = self.median_snr_range
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["median_snr_range"] = list(self.median_snr_range)
        d["target_params"] = self.target_params.to_dict()
        return d


@dataclass
class Pair:
    """One training pair.

    Attributes
    ----------
    input : ndarray of float32
        Noisy input ``x`` in counts (Eq. 2).
    target : ndarray of uint8
        Spot mask {0, 1}.
    meta : dict
        How it was made: ``scale``, ``median_snr``, ``r_bg``, ``i0``, ``tau``, ``seed``,
        ``target`` and whatever the caller passed (sample, geometry, omega, background seed).
    """

    input: np.ndarray
    target: np.ndarray
    meta: dict[str, Any]

    def input_uint8(self) -> np.ndarray:
        """The paper's 8-bit input (:func:`to_uint8`)."""
        return to_uint8(self.input)

    def input_normalized(self) -> np.ndarray:
        """The float input for our training (:func:`normalize_frame`)."""
        return normalize_frame(self.input)

    def target_uint8(self) -> np.ndarray:
        """The target as an 8-bit image, spots 255."""
        return self.target * np.uint8(255)


def make_pair(
    clean: np.ndarray,
    labels: np.ndarray,
    background: np.ndarray,
    *,
    beamstop: np.ndarray | None = None,
    config: SynthesisConfig = SynthesisConfig(),
    seed: int | np.random.Generator | None = None,
    meta: dict[str, Any] | None = None,
) -> Pair:
    """A training pair from a simulated projection and a background (Eq. 1-2).

    Parameters
    ----------
    clean : (M, N) float array
        Simulated spot intensity above background (0 in the beam stop).
    labels : (M, N) int array
        Simulated spot labels.
    background : (M, N) array
        Normalised background in [0, 1] with the same beam stop.
    beamstop : (M, N) bool array, optional
        Beam-stop pixels (excluded from LoG targets).
    config : SynthesisConfig
    seed : int, Generator or None
        Same seed, same pair.
    meta : dict, optional
        Extra metadata stored with the pair.

    Returns
    -------
    Pair
    """
    clean = _check_image(clean, "clean")
    labels = _check_image(labels, "labels", clean.shape)
    background = _check_image(background, "background", clean.shape)
    rng = np.random.default_rng(seed)
    r_bg = draw_r_bg(config.i0, rng)
    median_snr = config.draw_median_snr(rng)
    stats = spot_statistics(clean, labels)
    rows = np.clip(np.rint(stats["row"]).astype(int), 0, clean.shape[0] - 1)
    cols = np.clip(np.rint(stats["col"]).astype(int), 0, clean.shape[1] - 1)
    scale = scale_for_median_snr(median_snr, stats["mean"], background[rows, cols],
                                 r_bg, config.tau)
    x, _ = synthesize_input(clean, background, i0=config.i0, tau=config.tau, scale=scale,
                            r_bg=r_bg, rng=rng)
    target = make_target(config.target, clean, labels, beamstop, config.target_params)
    info = dict(meta or {})
    info.update(scale=scale, median_snr=median_snr, r_bg=r_bg, i0=config.i0, tau=config.tau,
                target=config.target, n_spots=int(stats["label"].size))
    if isinstance(seed, (int, np.integer)):
        info["seed"] = int(seed)
    return Pair(input=x, target=target, meta=info)


# --------------------------------------------------------------- varied acquisitions
def random_acquisition(
    seed: int | np.random.Generator | None = None,
    *,
    samples: tuple[str, ...] = ("D18", "D35", "D64"),
    materials: tuple[str, ...] = ("Al", "Fe"),
    distance_range: tuple[float, float] = (11.0, 30.0),
    max_tilt: float = 2.0,
    max_offset: float = 0.3,
    beamstop_fraction: tuple[float, float] = (0.3, 0.5),
    kvp_range: tuple[float, float] = (100.0, 160.0),
):
    """A random sample and geometry for varied training data.

    Sample size and grain count follow one of the presets ``samples``; the material is drawn
    from ``materials``. Lss and Lsd are drawn independently and uniformly in
    ``distance_range`` (mm), each detector tilt angle uniformly in ``±max_tilt`` degrees, the
    detector offset uniformly in ``±max_offset`` mm, the tube voltage in ``kvp_range``. The
    beam stop's shadow is a square of side ``beamstop_fraction`` (drawn uniformly) of the
    detector's smaller side, centred on the direct beam: a physical beam stop just in front
    of the detector, whose shadow does not scale with Lsd.

    Returns
    -------
    (SampleSpec, Geometry)
    """
    from dataclasses import replace


    rng = np.random.default_rng(seed)
    if not samples:
        raise SynthesisError("samples must name at least one preset")
    if not materials:
        raise SynthesisError("materials must name at least one material")
    lo, hi = distance_range
    if not 0 < lo <= hi:
        raise SynthesisError(f"distance_range must be (low, high) mm with 0 < low <= high, "
                             f"got {distance_range!r}")
    name = str(samples[rng.integers(len(samples))])
    spec, base = preset(name)
    material = str(materials[rng.integers(len(materials))])
    spec = replace(spec, material=material, name=f"{name}-{material}")
    geometry = base.with_(
        lss=float(rng.uniform(lo, hi)),
        lsd=float(rng.uniform(lo, hi)),
        tilt=tuple(float(v) for v in rng.uniform(-max_tilt, max_tilt, 3)),
        offset=tuple(float(v) for v in rng.uniform(-max_offset, max_offset, 2)),
        kvp=float(rng.uniform(*kvp_range)),
        beamstop=NO_BEAMSTOP,
    )
    rows, cols = geometry.detector_shape
    half = 0.5 * rng.uniform(*beamstop_fraction) * min(rows, cols)
    rc, cc = beam_center_pixel(geometry)
    rc = float(np.clip(rc, half, rows - 1 - half))
    cc = float(np.clip(cc, half, cols - 1 - half))
    box = (int(round(rc - half)), int(round(rc + half)), int(round(cc - half)),
           int(round(cc + half)))
    return spec, geometry.with_(beamstop=box)
