"""The rolling median of the standard routine's step 1: each frame minus the median of its
ω-neighbours, by a numba sorting network, streamed one frame at a time.
"""

from __future__ import annotations

from collections.abc import Iterable

import numba
import numpy as np

from labdct_live.segmentation.threshold import _as_exclude_mask

__all__ = [
    "RoutineParameterError",
    "StackTooShortError",
    "RollingMedianSubtractor",
    "subtract_rolling_median",
]


class RoutineParameterError(ValueError):
    """A parameter of the standard routine outside its valid range."""


class StackTooShortError(ValueError):
    """Fewer frames than the rolling-median window."""


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
