"""TIFF output: files written atomically, mask frames, and the layout tags a viewer reads."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import tifffile

from labdct_live.io.output import atomic_file

__all__ = [
    "write_tiff_atomic",
    "write_mask_tiff",
    "tiff_layout_tags",
]

log = logging.getLogger(__name__)


#: TIFF tag of the image orientation (how a viewer flips/rotates the stored pixels).
ORIENTATION_TAG = 274


def tiff_layout_tags(path: str | os.PathLike | None) -> dict:
    """``tifffile.imwrite`` keyword arguments repeating ``path``'s orientation and resolution.

    A mask or denoised image written with them is shown by a viewer that honours the TIFF
    Orientation tag (274) exactly like the frame it came from.

    Parameters
    ----------
    path : path-like or None
        The input TIFF (its first page is read); None gives ``{}``.

    Returns
    -------
    dict
        Some of ``extratags``, ``resolution``, ``resolutionunit``; empty when the file has
        neither tag or cannot be read.
    """
    if path is None:
        return {}
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            tags = page.tags
            kwargs: dict = {}
            orientation = tags.get(ORIENTATION_TAG)
            if orientation is not None and int(orientation.value) != 1:  # 1 = the default
                kwargs["extratags"] = [(ORIENTATION_TAG, "H", 1, int(orientation.value), True)]
            if tags.get(282) is not None and tags.get(283) is not None:  # X/YResolution
                kwargs["resolution"] = tuple(page.resolution)
                kwargs["resolutionunit"] = int(page.resolutionunit)
            return kwargs
    except Exception as exc:  # noqa: BLE001 - layout tags are a courtesy, never fatal
        log.info("cannot read layout tags of %s (%s); writing without them", path, exc)
        return {}


def write_tiff_atomic(path: str | os.PathLike, data: np.ndarray, **kwargs) -> Path:
    """Write a TIFF under a temporary name in the same folder, then rename it into place.

    ``kwargs`` go to ``tifffile.imwrite`` (e.g. :func:`tiff_layout_tags` of the input).
    """
    path = Path(path)
    with atomic_file(path) as tmp:
        tifffile.imwrite(tmp, data, **kwargs)
    return path


def write_mask_tiff(path: str | os.PathLike, mask: np.ndarray,
                    like: str | os.PathLike | None = None) -> Path:
    """Write a binary mask (or a stack of masks) as uint8 0/255, atomically.

    Parameters
    ----------
    path : path-like
        Destination file.
    mask : ndarray
        Non-zero = spot.
    like : path-like, optional
        The input frame's TIFF: its orientation and resolution tags are repeated
        (:func:`tiff_layout_tags`).
    """
    mask = np.asarray(mask)
    return write_tiff_atomic(path, np.where(mask > 0, np.uint8(255), np.uint8(0)),
                             **tiff_layout_tags(like))
