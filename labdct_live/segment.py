"""Spot segmentation: the standard routine of LabDCT (docs/physics.md §7), one-threshold
segmentation for denoised images, and spot tables.

The standard routine, for every frame of a rotation scan:

1. subtract, pixel by pixel, the median of the ``window`` neighbouring frames (centred,
   circular in omega), leaving the beam stop at 0;
2. subtract a constant ``background`` value and clip at 0;
3. smooth with a Gaussian of SD ``sigma``, take the (5-point) Laplacian and keep the positive
   part of ``-LoG``;
4. zero the beam stop, remove components smaller than ``min_size`` pixels, label
   (4-connectivity), keep inside each component the pixels above ``percent`` x the
   component's maximum response, remove components smaller than ``min_size`` again.

Step 1 needs future frames, so it is offered as a stream (:class:`RollingMedianSubtractor`,
:class:`StandardRoutine`): push frames one at a time and receive each result as soon as its
window is complete; :meth:`~StandardRoutine.finish` at the end of the scan produces the
frames whose window wraps around 360°. The median is taken with a sorting network compiled
by numba (a few tens of ms per 2032² frame for 11 frames on 2 cores, ~15x faster than
``numpy.median``), so the routine's cost is dominated by steps 2-4 (:func:`log_response`,
:func:`threshold_response`).

All masks are uint8 {0, 1}; all labelling uses 4-connectivity.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace

import numba
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from labdct_live.spot_schema import SPOT_TABLE_COLUMNS

__all__ = [
    "RoutineParams",
    "RoutineParameterError",
    "StackTooShortError",
    "FrameResult",
    "RollingMedianSubtractor",
    "StandardRoutine",
    "subtract_rolling_median",
    "log_response",
    "threshold_response",
    "segment_corrected",
    "iter_standard_routine",
    "standard_routine",
    "threshold_segment",
    "remove_small_components",
    "label_spots",
    "as_labels",
    "spot_table",
    "SPOT_TABLE_COLUMNS",
    "FOUR_CONNECTIVITY",
]

#: Structuring element for 4-connected labelling.
FOUR_CONNECTIVITY = ndi.generate_binary_structure(2, 1)



class RoutineParameterError(ValueError):
    """A parameter of the standard routine outside its valid range."""


class StackTooShortError(ValueError):
    """Fewer frames than the rolling-median window."""


# --------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class RoutineParams:
    """Parameters of the standard routine.

    Defaults are the values seen in the public code of the field (docs/physics.md §7; Al sample,
    14 mm): these are the "paper's parameters" this project compares against.

    Parameters
    ----------
    window : int
        Frames in the centred rolling-median window (odd, >= 3).
    background : float
        Constant subtracted after the median (counts).
    sigma : float
        SD of the Gaussian before the Laplacian (pixels).
    percent : float
        Fraction of a component's maximum response a pixel must exceed, in [0, 1).
    min_size : int
        Smallest component kept (pixels).
    """

    window: int = 11
    background: float = 5.0
    sigma: float = 6.0
    percent: float = 0.10
    min_size: int = 10

    def __post_init__(self) -> None:
        if int(self.window) != self.window or self.window < 3 or self.window % 2 == 0:
            raise RoutineParameterError(
                f"window must be an odd number of frames >= 3, got {self.window!r}")
        if not np.isfinite(self.background) or self.background < 0:
            raise RoutineParameterError(
                f"background must be a count >= 0, got {self.background!r}")
        if not np.isfinite(self.sigma) or self.sigma <= 0:
            raise RoutineParameterError(f"sigma must be > 0 pixels, got {self.sigma!r}")
        if not 0 <= self.percent < 1:
            raise RoutineParameterError(
                f"percent must be a fraction in [0, 1), got {self.percent!r}")
        if int(self.min_size) != self.min_size or self.min_size < 1:
            raise RoutineParameterError(
                f"min_size must be a whole number of pixels >= 1, got {self.min_size!r}")
        object.__setattr__(self, "window", int(self.window))
        object.__setattr__(self, "min_size", int(self.min_size))
        object.__setattr__(self, "background", float(self.background))
        object.__setattr__(self, "sigma", float(self.sigma))
        object.__setattr__(self, "percent", float(self.percent))

    @classmethod
    def public_code(cls) -> RoutineParams:
        """Window 11, background 5, sigma 6, percent 0.10, minimum size 10 px (the default)."""
        return cls()

    @classmethod
    def older_variant(cls) -> RoutineParams:
        """The older public variant: sigma 0.5, minimum size 2 px, otherwise the default."""
        return cls(sigma=0.5, min_size=2)

    @classmethod
    def preset(cls, name: str) -> RoutineParams:
        """``"public-code"`` (alias ``"paper"``) or ``"older"``."""
        presets = {"public-code": cls.public_code, "paper": cls.public_code,
                   "older": cls.older_variant}
        if name not in presets:
            raise RoutineParameterError(
                f"unknown routine preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    def with_(self, **changes) -> RoutineParams:
        """A copy with some parameters changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------- rolling median
def _batcher_network(n: int) -> list[tuple[int, int]]:
    """Comparators of Batcher's odd-even merge sort for ``n`` inputs."""
    size = 1
    while size < n:
        size *= 2
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    # Inputs beyond n act as +inf and never move: drop their comparators.
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    return pairs


def _median_network(n: int) -> np.ndarray:
    """Comparators of a sorting network for ``n`` inputs that affect the middle output."""
    needed = {n // 2}
    kept = []
    for a, b in reversed(_batcher_network(n)):
        if a in needed or b in needed:
            kept.append((a, b))
            needed.update((a, b))
    return np.array(kept[::-1], dtype=np.int64).reshape(-1, 2)


@numba.njit(parallel=True, cache=True, nogil=True)
def _subtract_median(store, planes, center, pairs, exclude, out):  # pragma: no cover (jit)
    n = planes.shape[0]
    rows, cols = out.shape
    for r in numba.prange(rows):
        buf = np.empty((n, cols), dtype=store.dtype)
        for k in range(n):
            buf[k] = store[planes[k], r]
        for p in range(pairs.shape[0]):
            a = pairs[p, 0]
            b = pairs[p, 1]
            for c in range(cols):
                x = buf[a, c]
                y = buf[b, c]
                buf[a, c] = min(x, y)
                buf[b, c] = max(x, y)
        for c in range(cols):
            if exclude[r, c]:
                out[r, c] = 0.0
            else:
                out[r, c] = np.float32(store[center, r, c]) - np.float32(buf[n // 2, c])


def _as_exclude_mask(exclude: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    if exclude is None:
        return np.zeros(shape, dtype=np.bool_)
    exclude = np.asarray(exclude, dtype=bool)
    if exclude.shape != shape:
        raise ValueError(
            f"exclude (beam-stop) mask has shape {exclude.shape}, frames have {shape}")
    return exclude


class RollingMedianSubtractor:
    """Per-pixel rolling-median subtraction over a stream of frames.

    Frame ``i`` becomes ``frame_i - median(frames i-h .. i+h)`` with ``h = window // 2``;
    in the excluded region (the beam stop) the result is 0. With ``circular=True`` (a
    360° scan) the window wraps around the ends of the scan; otherwise it is shifted to
    stay inside the scan.

    Parameters
    ----------
    window : int
        Odd window length (frames).
    circular : bool
        Wrap the window around the end of the scan.
    exclude : ndarray of bool, optional
        Pixels to leave at 0 (the beam stop).

    Notes
    -----
    :meth:`push` returns, for each frame whose window is now complete, ``(index, result)``
    with a float32 ``result``; frame ``i`` comes out when frame ``i + h`` is pushed. The first
    ``h`` frames (circular) and the last ``h`` frames come out of :meth:`finish`, last ones
    first. The stream keeps ``window`` frames plus, when circular, copies of the first
    ``2 h`` frames.

    Examples
    --------
    >>> sub = RollingMedianSubtractor(window=3)
    >>> out = [r for f in np.arange(4.0)[:, None, None] * np.ones((4, 2, 2))
    ...        for r in sub.push(f)] + sub.finish()
    >>> sorted(i for i, _ in out)
    [0, 1, 2, 3]
    """

    def __init__(self, window: int = 11, circular: bool = True,
                 exclude: np.ndarray | None = None):
        if int(window) != window or window < 3 or window % 2 == 0:
            raise RoutineParameterError(
                f"window must be an odd number of frames >= 3, got {window!r}")
        self.window = int(window)
        self.half = self.window // 2
        self.circular = bool(circular)
        self._exclude_in = exclude
        self._exclude: np.ndarray | None = None
        self._pairs = _median_network(self.window)
        self._store: np.ndarray | None = None
        self.n_pushed = 0
        self.finished = False

    def _allocate(self, frame: np.ndarray) -> None:
        # uint16 raw frames are kept as they are (half the memory); anything else as float32.
        dtype = np.uint16 if frame.dtype == np.uint16 else np.float32
        n_head = 2 * self.half if self.circular else 0
        self._store = np.empty((self.window + n_head,) + frame.shape, dtype=dtype)
        self._exclude = _as_exclude_mask(self._exclude_in, frame.shape)

    def _compute(self, planes: list[int], center: int) -> np.ndarray:
        out = np.empty(self._store.shape[1:], dtype=np.float32)
        _subtract_median(self._store, np.asarray(planes, dtype=np.int64), center,
                         self._pairs, self._exclude, out)
        return out

    def _ring(self, frame_index: int) -> int:
        return frame_index % self.window

    def push(self, frame: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Add the next frame; return the frames whose window is now complete."""
        if self.finished:
            raise RuntimeError("push() after finish(): start a new RollingMedianSubtractor")
        frame = np.asarray(frame)
        if frame.ndim != 2:
            raise ValueError(f"frames must be 2-D (rows, cols), got shape {frame.shape}")
        if self._store is None:
            self._allocate(frame)
        elif frame.shape != self._store.shape[1:]:
            raise ValueError(
                f"frame {self.n_pushed} has shape {frame.shape}, earlier frames "
                f"{self._store.shape[1:]}")
        j = self.n_pushed
        self._store[self._ring(j)] = frame
        if self.circular and j < 2 * self.half:
            self._store[self.window + j] = frame
        self.n_pushed += 1

        ready = []
        all_ring = list(range(self.window))
        if not self.circular and j == self.window - 1:
            ready += [(i, self._compute(all_ring, self._ring(i))) for i in range(self.half)]
        if j >= 2 * self.half:
            i = j - self.half
            ready.append((i, self._compute(all_ring, self._ring(i))))
        return ready

    def finish(self) -> list[tuple[int, np.ndarray]]:
        """End of scan: return the remaining frames (last ``h``, then first ``h`` if circular).

        Raises
        ------
        StackTooShortError
            If fewer frames than the window were pushed.
        """
        if self.finished:
            return []
        self.finished = True
        n = self.n_pushed
        if n < self.window:
            raise StackTooShortError(
                f"the stack has {n} frame(s), fewer than the rolling-median window of "
                f"{self.window}; use a shorter window or more frames")
        h = self.half
        if not self.circular:
            all_ring = list(range(self.window))
            ready = [(i, self._compute(all_ring, self._ring(i))) for i in range(n - h, n)]
            self._store = None  # release memory
            return ready

        def slot(f: int) -> int:
            # The ring holds frames n-window .. n-1; the head copies hold frames 0 .. 2h-1.
            return self._ring(f) if f >= n - self.window else self.window + f

        ready = []
        for i in list(range(n - h, n)) + list(range(h)):
            planes = [slot((i + k) % n) for k in range(-h, h + 1)]
            ready.append((i, self._compute(planes, slot(i))))
        self._store = None  # release memory
        return ready


def subtract_rolling_median(frames: Iterable[np.ndarray], window: int = 11,
                            circular: bool = True,
                            exclude: np.ndarray | None = None) -> np.ndarray:
    """Rolling-median subtraction of a whole stack (see :class:`RollingMedianSubtractor`).

    Parameters
    ----------
    frames : (n, rows, cols) array or iterable of (rows, cols) arrays
        The scan, in omega order.
    window, circular, exclude
        As for :class:`RollingMedianSubtractor`.

    Returns
    -------
    ndarray
        ``(n, rows, cols)`` float32, frame minus its rolling median (0 where excluded).
    """
    sub = RollingMedianSubtractor(window, circular, exclude)
    results = {}
    for frame in frames:
        results.update(sub.push(frame))
    results.update(sub.finish())
    return np.stack([results[i] for i in range(len(results))])


# ------------------------------------------------------------------ post-median stages
def log_response(corrected: np.ndarray, background: float, sigma: float,
                 exclude: np.ndarray | None = None) -> np.ndarray:
    """Steps 2-3 of the routine: positive ``-LoG`` of the background-subtracted image.

    Parameters
    ----------
    corrected : (rows, cols) array
        Frame after rolling-median subtraction.
    background : float
        Constant subtracted before clipping at 0.
    sigma : float
        Gaussian SD (pixels).
    exclude : ndarray of bool, optional
        Pixels set to 0 in the response (the beam stop).

    Returns
    -------
    ndarray
        float32 response, >= 0.
    """
    x = np.asarray(corrected, dtype=np.float32) - np.float32(background)
    np.maximum(x, 0, out=x)
    smooth = ndi.gaussian_filter(x, sigma, output=np.float32)
    response = ndi.laplace(smooth, output=np.float32)
    np.negative(response, out=response)
    np.maximum(response, 0, out=response)
    if exclude is not None:
        response[_as_exclude_mask(exclude, response.shape)] = 0
    return response


def remove_small_components(mask: np.ndarray, min_size: int) -> tuple[np.ndarray, int]:
    """Label a mask (4-connectivity) and drop components smaller than ``min_size``.

    Returns
    -------
    labels : ndarray of int32
        Consecutive labels 1..n of the kept components, 0 elsewhere.
    n : int
        Number of kept components.
    """
    labels, n = ndi.label(mask, structure=FOUR_CONNECTIVITY)
    if n == 0:
        return labels.astype(np.int32, copy=False), 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    keep[0] = False
    relabel = np.zeros(n + 1, dtype=np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return relabel[labels], int(keep.sum())


@numba.njit(cache=True, nogil=True)
def _label_maxima(values, labels, n):  # pragma: no cover (jit)
    """Maximum of ``values`` in each label 1..n (index 0 unused)."""
    out = np.full(n + 1, -np.inf)
    flat_v = values.ravel()
    flat_l = labels.ravel()
    for p in range(flat_l.size):
        k = flat_l[p]
        if k > 0 and flat_v[p] > out[k]:
            out[k] = flat_v[p]
    return out


@numba.njit(parallel=True, cache=True, nogil=True)
def _above_fraction_of_max(values, labels, maxima, fraction):  # pragma: no cover (jit)
    """True where a labelled pixel exceeds ``fraction`` x its label's maximum."""
    rows, cols = labels.shape
    out = np.zeros((rows, cols), dtype=np.bool_)
    for r in numba.prange(rows):
        for c in range(cols):
            k = labels[r, c]
            if k > 0 and values[r, c] > fraction * maxima[k]:
                out[r, c] = True
    return out


def threshold_response(response: np.ndarray, percent: float,
                       min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Step 4 of the routine (after zeroing the beam stop in ``response``).

    Returns
    -------
    mask : ndarray of uint8
        Final spot mask {0, 1}.
    labels : ndarray of int32
        Its 4-connected labels 1..n.
    """
    labels, n = remove_small_components(response > 0, min_size)
    maxima = _label_maxima(response, labels, n)
    keep = _above_fraction_of_max(response, labels, maxima, float(percent))
    labels, _ = remove_small_components(keep, min_size)
    return (labels > 0).astype(np.uint8), labels


def segment_corrected(corrected: np.ndarray, params: RoutineParams = RoutineParams(),
                      exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Steps 2-4 of the routine on one median-subtracted frame: ``(mask, labels)``."""
    response = log_response(corrected, params.background, params.sigma, exclude)
    return threshold_response(response, params.percent, params.min_size)


# --------------------------------------------------------------------------- spot tables
def label_spots(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected labels of a binary mask: ``(labels int32, n)``."""
    labels, n = ndi.label(np.asarray(mask) > 0, structure=FOUR_CONNECTIVITY)
    return labels.astype(np.int32, copy=False), int(n)


def as_labels(image: np.ndarray) -> np.ndarray:
    """A label image from a label image or a binary mask.

    An integer image with more than one non-zero value is taken as labels; anything else
    (a 0/1 or 0/255 mask, a float mask) is thresholded at 0 and labelled by 4-connectivity.
    """
    image = np.asarray(image)
    if image.dtype.kind in "iu":
        positive = image[image > 0]
        if positive.size and positive.min() != positive.max():
            return image.astype(np.int64, copy=False)
    return label_spots(image > 0)[0]


@numba.njit(cache=True, nogil=True)
def _label_stats(labels, values, n):  # pragma: no cover (jit)
    """One pass over a label image: per-label sums, extremes and bounding boxes."""
    area = np.zeros(n + 1, dtype=np.int64)
    stats = np.zeros((n + 1, 6))  # total, weight, weight*row, weight*col, row, col
    peak = np.full(n + 1, -np.inf)
    box = np.empty((n + 1, 4), dtype=np.int64)  # row_min, row_max, col_min, col_max
    box[:, 0] = box[:, 2] = np.iinfo(np.int64).max
    box[:, 1] = box[:, 3] = -1
    rows, cols = labels.shape
    for r in range(rows):
        for c in range(cols):
            k = labels[r, c]
            if k <= 0:
                continue
            v = values[r, c]
            w = max(v, 0.0)
            area[k] += 1
            stats[k, 0] += v
            stats[k, 1] += w
            stats[k, 2] += w * r
            stats[k, 3] += w * c
            stats[k, 4] += r
            stats[k, 5] += c
            peak[k] = max(peak[k], v)
            box[k, 0] = min(box[k, 0], r)
            box[k, 1] = max(box[k, 1], r)
            box[k, 2] = min(box[k, 2], c)
            box[k, 3] = max(box[k, 3], c)
    return area, stats, peak, box


def spot_table(labels: np.ndarray, intensity: np.ndarray) -> pd.DataFrame:
    """Per-spot properties of a label image.

    Parameters
    ----------
    labels : (rows, cols) int array
        Spot labels, 0 = background. Labels need not be consecutive.
    intensity : (rows, cols) array
        Image the intensities are measured on (for the routine: the median-subtracted
        frame, i.e. counts above the local background).

    Returns
    -------
    pandas.DataFrame
        One row per label present, columns :data:`SPOT_TABLE_COLUMNS`. The centroid is
        weighted by the intensity clipped at 0 (the geometric centroid where that sum is 0);
        ``row_start:row_stop, col_start:col_stop`` is the bounding box as slices.
    """
    labels = np.asarray(labels)
    intensity = np.asarray(intensity, dtype=np.float64)
    if labels.ndim != 2 or labels.shape != intensity.shape:
        raise ValueError(
            f"labels {labels.shape} and intensity {intensity.shape} must be 2-D of one shape")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer image, got {labels.dtype}")
    top = int(labels.max(initial=0))
    if top > labels.size:  # sparse label values: compact them first
        ids, inverse = np.unique(labels, return_inverse=True)
        if ids[0] != 0:  # make room for the background at index 0
            ids, inverse = np.concatenate([[0], ids]), inverse + 1
        compact = inverse.reshape(labels.shape).astype(np.int64)
        area, stats, peak, box = _label_stats(compact, intensity, ids.size - 1)
        ids_of = ids
    else:
        area, stats, peak, box = _label_stats(labels.astype(np.int64, copy=False), intensity,
                                              top)
        ids_of = np.arange(top + 1)
    present = np.flatnonzero(area > 0)
    area, stats, peak, box = area[present], stats[present], peak[present], box[present]
    weighted = stats[:, 1] > 0
    safe_w = np.where(weighted, stats[:, 1], 1.0)
    return pd.DataFrame({
        "label": ids_of[present].astype(np.int64),
        "centroid_row": np.where(weighted, stats[:, 2] / safe_w, stats[:, 4] / area),
        "centroid_col": np.where(weighted, stats[:, 3] / safe_w, stats[:, 5] / area),
        "area": area,
        "integrated_intensity": stats[:, 0],
        "peak_intensity": peak,
        "row_start": box[:, 0], "row_stop": box[:, 1] + 1,
        "col_start": box[:, 2], "col_stop": box[:, 3] + 1,
    })


# --------------------------------------------------------------------- the whole routine
@dataclass
class FrameResult:
    """Segmentation of one frame.

    Attributes
    ----------
    index : int
        Frame index in the scan.
    mask : ndarray of uint8
        Spot mask {0, 1}.
    labels : ndarray of int32
        4-connected spot labels (the ``label`` column of ``spots``).
    spots : pandas.DataFrame
        :func:`spot_table` of the frame.
    image : ndarray or None
        The image intensities were measured on (median-subtracted frame for the routine).
    """

    index: int
    mask: np.ndarray
    labels: np.ndarray
    spots: pd.DataFrame
    image: np.ndarray | None = field(default=None, repr=False)


class StandardRoutine:
    """The standard routine as a stream: push frames, receive :class:`FrameResult` s.

    Parameters
    ----------
    params : RoutineParams
        Routine parameters.
    exclude : ndarray of bool, optional
        Beam-stop mask (True = shadow), excluded from the median and zeroed in the response.
    circular : bool
        Whether the scan covers 360° so the rolling window wraps around its ends.

    Examples
    --------
    >>> routine = StandardRoutine(RoutineParams(window=3, sigma=1, min_size=1))
    >>> frames = np.zeros((5, 16, 16)); frames[2, 8, 8] = 100
    >>> results = [r for f in frames for r in routine.push(f)] + routine.finish()
    >>> {r.index: len(r.spots) for r in results}[2]
    1
    """

    def __init__(self, params: RoutineParams = RoutineParams(),
                 exclude: np.ndarray | None = None, circular: bool = True):
        self.params = params
        self.exclude = None if exclude is None else np.asarray(exclude, dtype=bool)
        self._median = RollingMedianSubtractor(params.window, circular, self.exclude)

    def _segment(self, index: int, corrected: np.ndarray) -> FrameResult:
        mask, labels = segment_corrected(corrected, self.params, self.exclude)
        return FrameResult(index, mask, labels, spot_table(labels, corrected), corrected)

    def push(self, frame: np.ndarray) -> list[FrameResult]:
        """Add the next frame; return the results whose rolling window is complete."""
        return [self._segment(i, c) for i, c in self._median.push(frame)]

    def finish(self) -> list[FrameResult]:
        """End of scan: results of the remaining frames (see RollingMedianSubtractor)."""
        return [self._segment(i, c) for i, c in self._median.finish()]


def iter_standard_routine(frames: Iterable[np.ndarray], params: RoutineParams = RoutineParams(),
                          exclude: np.ndarray | None = None,
                          circular: bool = True) -> Iterator[FrameResult]:
    """Run the routine over an iterable of frames, yielding results as they complete.

    Results come in completion order, not frame order: key them by ``result.index``.
    Frames are consumed lazily, so a :class:`labdct_live.io.FrameStack` is never held
    in memory whole.
    """
    routine = StandardRoutine(params, exclude, circular)
    for frame in frames:
        yield from routine.push(frame)
    yield from routine.finish()


def standard_routine(frames: Iterable[np.ndarray], params: RoutineParams = RoutineParams(),
                     exclude: np.ndarray | None = None,
                     circular: bool = True) -> tuple[np.ndarray, pd.DataFrame]:
    """The standard routine on a whole stack.

    Parameters
    ----------
    frames : (n, rows, cols) array or iterable of (rows, cols) arrays
        The scan in omega order (n >= ``params.window``).
    params : RoutineParams
        Routine parameters.
    exclude : ndarray of bool, optional
        Beam-stop mask.
    circular : bool
        Wrap the rolling window around the scan's ends (a 360° scan).

    Returns
    -------
    masks : ndarray of uint8
        ``(n, rows, cols)`` spot masks {0, 1}.
    spots : pandas.DataFrame
        :func:`spot_table` rows of all frames with a leading ``frame`` column.

    Raises
    ------
    StackTooShortError
        If the stack has fewer frames than the window.
    """
    results = sorted(iter_standard_routine(frames, params, exclude, circular),
                     key=lambda r: r.index)
    masks = np.stack([r.mask for r in results])
    tables = [r.spots.assign(frame=r.index) for r in results]
    spots = pd.concat(tables, ignore_index=True)
    return masks, spots[["frame", *SPOT_TABLE_COLUMNS]]


def threshold_segment(image: np.ndarray, threshold: float, min_size: int = 1,
                      exclude: np.ndarray | None = None) -> np.ndarray:
    """Segment spots by one threshold (for denoised images, e.g. the U-Net output).

    Parameters
    ----------
    image : (rows, cols) array
        Denoised image.
    threshold : float
        Pixels strictly above it are spot pixels (the paper uses 5 of 255).
    min_size : int
        Smallest 4-connected component kept (pixels).
    exclude : ndarray of bool, optional
        Pixels never segmented (the beam stop).

    Returns
    -------
    ndarray of uint8
        Spot mask {0, 1}.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D (rows, cols), got shape {image.shape}")
    if int(min_size) != min_size or min_size < 1:
        raise ValueError(f"min_size must be a whole number of pixels >= 1, got {min_size!r}")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    mask = image > threshold
    if exclude is not None:
        mask &= ~_as_exclude_mask(exclude, image.shape)
    labels, _ = remove_small_components(mask, int(min_size))
    return (labels > 0).astype(np.uint8)
