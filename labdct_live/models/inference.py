"""Inference: a noisy frame in, a clean spot image (float32 in [0, 1]) or a binary mask out.

Steps for one frame:

1. Normalise the whole frame once with :func:`labdct_live.training.synthesis.normalize_frame`, the
   function that made the training inputs: ``(frame - p50) / (p99 - p50)`` with the 50th and
   99th percentiles of the frame, so background sits near 0..1 and spots above it whatever
   the detector's count level; tiles of one frame share this one scale.
2. Pad by reflection to a multiple of the network's stride (``model.input_multiple``).
3. Run the network on the whole padded frame (``tile=None``) or on overlapping square tiles.
   Tiles are spread evenly over the frame at multiples of the stride (so that every tile
   sees the same space-to-depth phase as the whole frame). Along an edge that borders another
   tile, a tile's output gets no weight on the outer half of the overlap (where the network
   saw zero padding instead of neighbours) and a linear ramp up to 1 on the inner half; the
   weighted outputs are summed and divided by the summed weights, so no seam remains.
4. Crop back to the frame's shape.

For speed the network is prepared once per (model, device, precision): batch norms folded into
the preceding convs (``torch.fx`` conv-bn fusion, exact up to rounding), channels-last memory
layout, optionally bfloat16 autocast (``precision="bfloat16"``, ~2× faster on CPUs with
AVX512-BF16, outputs within ~1e-2) and ``torch.compile`` (``compile=True``, a one-off
compilation of ~20 s per tile shape, then ~2-3× faster on CPU).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from labdct_live.models.checkpoint import load_model
from labdct_live.models.pretrained import load_pretrained
from labdct_live.segmentation.normalization import normalize_frame
from labdct_live.segmentation.threshold import threshold_segment

__all__ = [
    "DEFAULT_MIN_SIZE",
    "DEFAULT_OVERLAP",
    "DEFAULT_THRESHOLD",
    "Denoiser",
    "denoise",
    "resolve_device",
    "segment_dl",
    "tile_starts",
]

logger = logging.getLogger(__name__)

#: Threshold on the [0, 1] output when the model's checkpoint recommends none.
DEFAULT_THRESHOLD = 0.5

#: Smallest spot (4-connected pixels) the U-Net segmentation keeps: a lone pixel above the
#: threshold is noise.
DEFAULT_MIN_SIZE = 2

#: Default tile overlap (px). For a trained compact_s4 on a 2032² frame with 512-px tiles,
#: an overlap of 128 px changed the thresholded output at 33 pixels, 192 px at 2, 256 px at 1.
DEFAULT_OVERLAP = 256

_PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else → ``torch.device(device)``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} requested but CUDA is not available; use 'cpu'")
    return device


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tile_starts(length: int, tile: int, overlap: int, stride: int = 1) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length``, overlapping ≥ ``overlap``.

    The fewest tiles that do it, spread evenly, each start a multiple of ``stride`` (so that
    every tile sees the same space-to-depth / pooling phase as the whole frame); the first
    starts at 0 and the last ends at ``length``. ``length`` and ``tile`` must be multiples of
    ``stride``, and ``tile - overlap >= stride``.
    """
    if tile >= length:
        return [0]
    blocks = (length - tile) // stride  # the last start, in strides
    max_step = (tile - overlap) // stride  # largest allowed step between starts, in strides
    intervals = math.ceil(blocks / max_step)
    return [stride * round(i * blocks / intervals) for i in range(intervals + 1)]


def _window(size: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    """Blending weights along one tile axis: 0 on the outer half of the overlap, then a ramp.

    Only sides that border another tile are tapered. The outer half (where the network saw
    the tile edge's zero padding within its receptive field) gets no weight at all; the
    neighbouring tile covers it with full weight.
    """
    weight = np.ones(size, np.float32)
    margin = overlap // 2
    ramp = (np.arange(overlap - margin, dtype=np.float32) + 1.0) / (overlap - margin + 1.0)
    # A tiny weight rather than 0 keeps every pixel's total weight positive whatever the layout.
    taper = np.concatenate([np.full(margin, 1e-6, np.float32), ramp])
    if at_start:
        weight[:overlap] = taper
    if at_end:
        weight[size - overlap :] = taper[::-1]
    return weight


class Denoiser:
    """A network prepared for fast inference, with the tiling and normalisation settings.

    Parameters
    ----------
    model : torch.nn.Module, path-like or None
        The network, a checkpoint file, or None for the shipped model
        (:func:`labdct_live.models.load_pretrained`).
    tile : int or None
        Tile side in pixels (rounded up to the network stride); None runs the whole frame at
        once (fastest on CPU for the compact models; use tiles to bound memory, e.g. for the
        ResNet34 model or on a small GPU).
    overlap : int or None
        Minimum overlap of neighbouring tiles in pixels (at most half a tile). The outer half
        of an overlap is discarded, the inner half blended by a linear ramp: tiled and
        whole-frame outputs agree when ``overlap / 2`` exceeds the network's effective
        receptive-field radius. None: :data:`DEFAULT_OVERLAP` (or less for small tiles:
        half the tile).
    batch_size : int
        Tiles per forward pass.
    threads : int or None
        torch CPU threads during a call (None: leave torch's setting).
    device : str or torch.device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
    precision : {"float32", "bfloat16", "float16"}
        Autocast precision of the network (the output is float32 either way).
    compile : bool
        ``torch.compile`` the prepared network (slow first call per tile shape).
    normalize : callable or bool
        True: :func:`labdct_live.training.synthesis.normalize_frame` (``(frame - p50) / (p99 -
        p50)``
        of the whole frame, as for the training inputs); a callable: a custom frame → float32
        normalisation; False: the frame is used as given (already normalised that way).
    """

    def __init__(
        self,
        model: nn.Module | str | None = None,
        *,
        tile: int | None = None,
        overlap: int | None = None,
        batch_size: int = 1,
        threads: int | None = None,
        device: str | torch.device = "auto",
        precision: str = "float32",
        compile: bool = False,
        normalize: Callable[[np.ndarray], np.ndarray] | bool = True,
    ):
        if model is None:
            model = load_pretrained()
        elif not isinstance(model, nn.Module):
            model = load_model(model)
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {list(_PRECISIONS)}, got {precision!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if overlap is not None and overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {overlap}")
        self.architecture = getattr(model, "architecture", None)
        self.metadata = dict(getattr(model, "metadata", None) or {})
        self.stride = int(getattr(model, "input_multiple", 1))
        if tile is not None:
            tile = self.stride * math.ceil(tile / self.stride)
            if overlap is None:
                overlap = min(DEFAULT_OVERLAP, tile // 2, tile - self.stride)
            if overlap > tile // 2:
                raise ValueError(f"overlap ({overlap}) must be at most half the tile ({tile})")
            if tile - overlap < self.stride:
                raise ValueError(f"tile ({tile}) must exceed overlap ({overlap}) by at least the "
                                 f"network's stride ({self.stride}): use a larger tile")
        self.tile = tile
        self.overlap = overlap or 0
        self.batch_size = batch_size
        self.threads = threads
        self.device = resolve_device(device)
        self.precision = precision
        if normalize is True:
            normalize = normalize_frame
        self.normalize = normalize or None
        self._network = self._prepare(model, compile)

    @property
    def threshold(self) -> float:
        """The model's recommended threshold (its checkpoint's ``inference.threshold``)."""
        inference = self.metadata.get("inference") or {}
        return float(inference.get("threshold", DEFAULT_THRESHOLD))

    def _prepare(self, model: nn.Module, compile: bool) -> nn.Module:
        network = copy.deepcopy(model).eval()
        try:
            with warnings.catch_warnings():  # the module's import warns about torch.jit
                warnings.simplefilter("ignore", DeprecationWarning)
                from torch.fx.experimental.optimization import fuse
            network = fuse(network)
        except Exception as exc:  # noqa: BLE001 - tracing can fail on exotic models; not fatal
            logger.info("batch-norm folding skipped (%s); running the model as is", exc)
        network = network.to(self.device, memory_format=torch.channels_last)
        if compile:
            network = torch.compile(network)
        return network

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch[:, None]).to(self.device).contiguous(
            memory_format=torch.channels_last
        )
        dtype = _PRECISIONS[self.precision]
        autocast = (
            torch.autocast(self.device.type, dtype=dtype)
            if dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            y = self._network(x)
        return y[:, 0].float().cpu().numpy()

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """Denoise one frame.

        Parameters
        ----------
        frame : (H, W) array
            A raw frame (uint16 counts) or any real 2-D array.

        Returns
        -------
        (H, W) float32 ndarray
            The clean spot image in [0, 1].
        """
        frame = np.asarray(frame)
        if frame.ndim != 2 or min(frame.shape) < 1:
            raise ValueError(f"frame must be a non-empty 2-D (row, col) array, got {frame.shape}")
        image = self.normalize(frame) if self.normalize else frame
        image = np.asarray(image, dtype=np.float32)
        if not np.all(np.isfinite(image)):
            raise ValueError("frame contains NaN or infinite values after normalisation")
        with _torch_threads(self.threads):
            return self._run(image)

    def _run(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape
        if self.tile is None:
            tile_h = self.stride * math.ceil(height / self.stride)
            tile_w = self.stride * math.ceil(width / self.stride)
        else:
            tile_h = tile_w = self.tile
        padded_h, padded_w = max(height, tile_h), max(width, tile_w)
        padded_h = self.stride * math.ceil(padded_h / self.stride)
        padded_w = self.stride * math.ceil(padded_w / self.stride)
        padded = np.pad(image, ((0, padded_h - height), (0, padded_w - width)), mode="symmetric")
        rows = tile_starts(padded_h, tile_h, self.overlap, self.stride)
        cols = tile_starts(padded_w, tile_w, self.overlap, self.stride)
        if len(rows) == len(cols) == 1:
            return self._forward(padded[None])[0, :height, :width]
        total = np.zeros((padded_h, padded_w), np.float32)
        weights = np.zeros((padded_h, padded_w), np.float32)
        positions = [(r, c) for r in rows for c in cols]
        for first in range(0, len(positions), self.batch_size):
            chunk = positions[first : first + self.batch_size]
            batch = np.stack([padded[r : r + tile_h, c : c + tile_w] for r, c in chunk])
            for (r, c), out in zip(chunk, self._forward(batch)):
                weight = np.outer(
                    _window(tile_h, self.overlap, r > 0, r + tile_h < padded_h),
                    _window(tile_w, self.overlap, c > 0, c + tile_w < padded_w),
                )
                total[r : r + tile_h, c : c + tile_w] += weight * out
                weights[r : r + tile_h, c : c + tile_w] += weight
        return (total / weights)[:height, :width]

    def segment(self, frame: np.ndarray, threshold: float | None = None, *,
                min_size: int = DEFAULT_MIN_SIZE, exclude: np.ndarray | None = None,
                return_denoised: bool = False):
        """The U-Net segmentation: denoise, then one threshold.

        The one implementation behind :func:`segment_dl`, the ``dl`` processing method (live,
        replay) and ``labdct-live segment --method dl``: the same frame gives the same mask
        on every path.

        Parameters
        ----------
        frame : (H, W) array
            Raw frame.
        threshold : float, optional
            Pixels of the denoised image strictly above it are spot pixels; in [0, 1). None:
            :attr:`threshold` (the model's recommendation).
        min_size : int
            Smallest 4-connected spot kept, pixels.
        exclude : (H, W) bool array, optional
            Pixels never segmented (the beam stop).
        return_denoised : bool
            Also return the denoised image (the spot table measures intensities on it).

        Returns
        -------
        mask : (H, W) uint8 ndarray
            1 = spot.
        denoised : (H, W) float32 ndarray
            Only when ``return_denoised``.
        """
        threshold = self.threshold if threshold is None else float(threshold)
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1) (output scale), got {threshold}")
        denoised = self(frame)
        mask = threshold_segment(denoised, threshold, min_size, exclude)
        return (mask, denoised) if return_denoised else mask


# One prepared Denoiser per (model, settings) for the functional API; weak keys so that a
# model dropped by its owner is not kept alive here.
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Denoiser]] = weakref.WeakKeyDictionary()
_PRETRAINED: dict[str, nn.Module] = {}


def _denoiser(model: nn.Module | str | None, settings: dict[str, Any]) -> Denoiser:
    if model is None:
        if "default" not in _PRETRAINED:
            _PRETRAINED["default"] = load_pretrained()
        model = _PRETRAINED["default"]
    elif not isinstance(model, nn.Module):
        return Denoiser(model, **settings)  # a path: loaded afresh each call
    key = tuple(sorted((k, v if not callable(v) else id(v)) for k, v in settings.items()))
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        per_model[key] = Denoiser(model, **settings)
    return per_model[key]


def denoise(
    frame: np.ndarray,
    model: nn.Module | str | None = None,
    *,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 1,
    threads: int | None = None,
    device: str | torch.device = "auto",
    precision: str = "float32",
    normalize: Callable[[np.ndarray], np.ndarray] | bool = True,
) -> np.ndarray:
    """Turn a noisy LabDCT frame into a clean spot image.

    Parameters
    ----------
    frame : (H, W) array
        Raw frame, any size (uint16 counts or float).
    model : torch.nn.Module, path-like or None
        Network, checkpoint file, or None for the shipped model.
    tile, overlap, batch_size, threads, device, precision, normalize
        See :class:`Denoiser`. Note: the weights of ``model`` are copied when it is first
        prepared; after changing them (e.g. more training) build a new :class:`Denoiser`.

    Returns
    -------
    (H, W) float32 ndarray
        Spot image in [0, 1] (0 = background, 1 = spot).

    Examples
    --------
    >>> import numpy as np
    >>> from labdct_live.models import denoise, get_model
    >>> frame = np.random.default_rng(0).poisson(100, (100, 70)).astype(np.uint16)
    >>> denoise(frame, get_model("compact_tiny"), device="cpu").shape
    (100, 70)
    """
    settings = dict(tile=tile, overlap=overlap, batch_size=batch_size, threads=threads,
                    device=device, precision=precision, normalize=normalize)
    return _denoiser(model, settings)(frame)


def segment_dl(
    frame: np.ndarray,
    threshold: float | None = None,
    model: nn.Module | str | None = None,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    exclude: np.ndarray | None = None,
    **options: Any,
) -> np.ndarray:
    """Segment spots with the network: denoise, then one threshold (as in the paper, §9).

    Parameters
    ----------
    frame : (H, W) array
        Raw frame, any size.
    threshold : float, optional
        Threshold on the [0, 1] output; default: the model's recommended threshold
        (checkpoint ``inference.threshold``), else :data:`DEFAULT_THRESHOLD`. The paper
        thresholded its 8-bit output at 5/255.
    model : torch.nn.Module, path-like or None
        Network, checkpoint file, or None for the shipped model.
    min_size : int
        Smallest 4-connected spot kept, pixels.
    exclude : (H, W) bool array, optional
        Pixels never segmented (the beam stop).
    **options
        ``tile``, ``overlap``, ``batch_size``, ``threads``, ``device``, ``precision``,
        ``normalize``: see :func:`denoise`.

    Returns
    -------
    (H, W) uint8 ndarray
        Binary mask, 1 = spot; the mask the live plugin writes for this frame
        (:meth:`Denoiser.segment`).
    """
    return _denoiser(model, options).segment(frame, threshold, min_size=min_size,
                                             exclude=exclude)
