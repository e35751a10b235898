"""What a scan offers a per-frame segmentation: static background, zingers, full spot extent.

* **Static background** (:class:`StaticBackground`, :func:`subtract_static`): a background
  that does not move with ω (the beam stop's streaks, the detector's fixed pattern) is not a
  spot. The per-pixel median of the frames of the scan (or of the last ``window`` frames,
  live) is that background; the network can be fed the frame minus it.
* **Zingers** (:func:`reject_zingers`): single pixels far above the background and above
  every one of their 8 neighbours (sharper than the detector's point spread) are replaced by
  the median of their neighbours before segmentation.
* **Faint spots** (:func:`drop_faint`): a spot whose peak in the frame minus its static
  background stays below a contrast (counts) is dropped; the contrast is chosen, like the
  threshold, by the Friedel score of the scan (``labdct-live adapt``).
* **Static segmentation** (:class:`StaticMaskWatch`): the share of a frame's segmented
  pixels that were segmented in nearly every one of the previous frames. Spots move with ω,
  so a high share means the segmentation follows the background (streaks, a fixed pattern)
  rather than the spots: a warning sign that the model does not fit the instrument.
* **Full extent** (:func:`grow_spots`): a thresholded spot is grown into the connected
  pixels of the denoised image above a lower threshold (hysteresis), so a bright spot is not
  cut to its core.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = ["StaticBackground", "StaticMaskWatch", "drop_faint", "grow_spots",
           "load_background_image", "reject_zingers", "subtract_static"]

_RING = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], bool)


def subtract_static(frame: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``frame - background`` as float32 (shapes must agree)."""
    frame = np.asarray(frame, dtype=np.float32)
    background = np.asarray(background, dtype=np.float32)
    if frame.shape != background.shape:
        raise ValueError(f"static background {background.shape} and frame {frame.shape} "
                         "differ in shape")
    return frame - background


def load_background_image(source: np.ndarray | str | os.PathLike) -> np.ndarray:
    """A background image from an array, a ``.npy`` file or a TIFF, float32."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"static background {path}: no such file")
        if path.suffix == ".npy":
            image = np.load(path, allow_pickle=False)
        else:
            from labdct_live.io.frames import read_frame

            image = read_frame(path)
    else:
        image = source
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2 or not np.all(np.isfinite(image)):
        raise ValueError(f"a static background must be a finite 2-D image, got {image.shape}")
    return image


class StaticBackground:
    """The static background of a stream of frames.

    Parameters
    ----------
    image : (H, W) array, optional
        A known static background (e.g. the stack median of the scan, or the one an adapted
        model carries); used until ``min_frames`` frames have been seen, or always when
        ``window`` is 0.
    window : int
        Frames in the rolling median (0: the fixed ``image`` only).
    min_frames : int
        Frames needed before the rolling median replaces ``image``.
    """

    def __init__(self, image: np.ndarray | None = None, window: int = 20, min_frames: int = 5):
        if window < 0 or min_frames < 1:
            raise ValueError(f"window must be >= 0 and min_frames >= 1, got {window}, "
                             f"{min_frames}")
        if image is None and window == 0:
            raise ValueError("a static background needs an image or a rolling window")
        self.image = None if image is None else load_background_image(image)
        self.window = int(window)
        self.min_frames = int(min_frames)
        self._frames: deque[np.ndarray] = deque(maxlen=max(self.window, 1))
        self._median: np.ndarray | None = None

    def current(self, frame: np.ndarray) -> np.ndarray:
        """The background to subtract from ``frame`` (the frame's own 31-px median filter
        when nothing better is known yet)."""
        if self.window and len(self._frames) >= self.min_frames:
            if self._median is None:
                self._median = np.median(np.stack(self._frames), axis=0).astype(np.float32)
            return self._median
        if self.image is not None:
            if self.image.shape != np.shape(frame):
                raise ValueError(f"static background {self.image.shape} and frame "
                                 f"{np.shape(frame)} differ in shape")
            return self.image
        return ndimage.median_filter(np.asarray(frame, np.float32), size=31, mode="reflect")

    def push(self, frame: np.ndarray) -> None:
        """Add a frame to the rolling window."""
        if self.window:
            self._frames.append(np.asarray(frame, dtype=np.float32))
            self._median = None

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """``frame`` minus its static background; the frame then joins the window."""
        out = subtract_static(frame, self.current(frame))
        self.push(frame)
        return out


class StaticMaskWatch:
    """Share of each mask's pixels that stayed segmented over the previous frames.

    Parameters
    ----------
    window : int
        Previous frames remembered (bit-packed: 1/8 byte per pixel and frame).
    min_frames : int
        Frames needed before a share is given (NaN before).
    fraction : float
        A pixel is static when it was segmented in at least this share of the remembered
        frames.

    Examples
    --------
    >>> watch = StaticMaskWatch(window=4, min_frames=2)
    >>> streak = np.zeros((8, 8), bool); streak[2, :] = True
    >>> shares = []
    >>> for k in range(4):
    ...     spot = np.zeros((8, 8), bool); spot[5, k] = True   # a spot that moves
    ...     shares.append(watch(streak | spot))
    >>> [round(s, 2) for s in shares[2:]]
    [0.89, 0.89]
    """

    def __init__(self, window: int = 20, min_frames: int = 10, fraction: float = 0.9):
        if window < 1 or not 1 <= min_frames <= window or not 0 < fraction <= 1:
            raise ValueError(f"need window >= 1, 1 <= min_frames <= window and 0 < fraction "
                             f"<= 1, got {window}, {min_frames}, {fraction}")
        self.window, self.min_frames, self.fraction = int(window), int(min_frames), fraction
        self._masks: deque[np.ndarray] = deque(maxlen=self.window)
        self._counts: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None

    def __call__(self, mask: np.ndarray) -> float:
        """The static share of ``mask`` (NaN for the first frames, or an empty mask); the
        mask then joins the window."""
        mask = np.asarray(mask) != 0
        if self._shape != mask.shape:  # a new detector shape starts afresh
            self._masks.clear()
            self._counts = np.zeros(mask.shape, np.uint16)
            self._shape = mask.shape
        share = float("nan")
        n = len(self._masks)
        if n >= self.min_frames and mask.any():
            static = self._counts >= np.ceil(self.fraction * n)
            share = float(np.count_nonzero(static & mask) / np.count_nonzero(mask))
        if n == self.window:
            oldest = np.unpackbits(self._masks[0], count=mask.size).reshape(mask.shape)
            self._counts -= oldest
        self._masks.append(np.packbits(mask))
        self._counts += mask
        return share


def reject_zingers(frame: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    """Replace single-pixel spikes by the median of their 8 neighbours.

    A pixel is a zinger when it exceeds the median of its 8 neighbours by more than
    ``threshold`` counts and the largest of them by more than half of that excess.

    Returns
    -------
    frame : ndarray
        A float32 copy with the zingers replaced (the input when there are none).
    count : int
        Pixels replaced.
    """
    frame = np.asarray(frame)
    x = frame.astype(np.float32)
    ring_median = ndimage.median_filter(x, footprint=_RING, mode="reflect")
    excess = x - ring_median
    candidate = excess > threshold
    if not candidate.any():
        return frame, 0
    ring_max = ndimage.maximum_filter(x, footprint=_RING, mode="reflect")
    zinger = candidate & (x - ring_max > 0.5 * excess)
    count = int(zinger.sum())
    if count:
        x[zinger] = ring_median[zinger]
        return x, count
    return frame, 0


def grow_spots(mask: np.ndarray, image: np.ndarray, low: float,
               exclude: np.ndarray | None = None) -> np.ndarray:
    """``mask`` grown into the connected pixels of ``image`` above ``low`` (uint8 {0, 1}).

    Spots are only grown, never created: a region above ``low`` that touches no pixel of
    ``mask`` stays out.
    """
    mask = np.asarray(mask) > 0
    region = (np.asarray(image) > low) | mask
    if exclude is not None:
        region &= ~np.asarray(exclude, bool)
    labels, n = ndimage.label(region)
    if n == 0:
        return mask.astype(np.uint8)
    keep = np.zeros(n + 1, bool)
    keep[np.unique(labels[mask & (labels > 0)])] = True
    keep[0] = False
    return keep[labels].astype(np.uint8)


def drop_faint(mask: np.ndarray, image: np.ndarray, min_peak: float) -> np.ndarray:
    """``mask`` without the 4-connected spots whose maximum of ``image`` is below ``min_peak``
    (uint8 {0, 1}); ``image`` is e.g. the frame minus its static background."""
    mask = np.asarray(mask) > 0
    labels, n = ndimage.label(mask)
    if n == 0 or min_peak <= 0:
        return mask.astype(np.uint8)
    peaks = ndimage.maximum(np.asarray(image, np.float32), labels, np.arange(1, n + 1))
    keep = np.concatenate([[False], np.asarray(peaks) >= min_peak])
    return keep[labels].astype(np.uint8)
