"""Folders of binary masks (``segment``'s output): frames, ω and the metadata beside them."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np

from labdct_live.export.metadata import ExportError
from labdct_live.io.frames import FrameStack, open_frame_folder

__all__ = [
    "MaskFolder",
    "open_mask_folder",
]


@dataclass(frozen=True)
class MaskFolder:
    """The binary masks of a folder (``labdct-live segment`` output), read lazily.

    Iterating yields ``(index, mask)`` with ``mask`` uint8 {0, 1}, in projection order.
    Create with :func:`open_mask_folder`.
    """

    stack: FrameStack
    order: tuple[int, ...]

    @property
    def names(self) -> list[str]:
        """Frame names in projection order."""
        names = self.stack.names
        return [names[k] for k in self.order]

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        names = self.stack.names
        for index, k in enumerate(self.order):
            frame = self.stack[k]
            spot_values = np.unique(frame[frame != 0])
            if spot_values.size > 1 or (spot_values.size and spot_values[0] < 0):
                raise ExportError(
                    f"{self.stack.folder / names[k]} is not a binary mask (spot pixels take "
                    f"{spot_values.size} values); SOURCE must hold masks written by "
                    "'labdct-live segment', not raw frames")
            yield index, (frame != 0).view(np.uint8)


def open_mask_folder(folder: str | os.PathLike,
                     frame_names: Sequence[str] | None = None) -> MaskFolder:
    """Index a folder of binary mask TIFFs (0/255 or 0/1), in projection order.

    Parameters
    ----------
    folder : path-like
        The masks, one file per frame (natural name order) or multi-frame stacks.
    frame_names : sequence of str, optional
        The scan's frame names in projection order (folders are ignored). When given, the
        folder must hold exactly these names and is read in this order.

    Returns
    -------
    MaskFolder

    Raises
    ------
    ExportError
        If the folder's frame names differ from ``frame_names``.
    """
    stack = open_frame_folder(folder)
    names = stack.names
    if frame_names is None:
        return MaskFolder(stack, tuple(range(len(names))))
    wanted = [PurePosixPath(str(n).replace("\\", "/")).name for n in frame_names]
    position = {name: k for k, name in enumerate(names)}
    missing = [n for n in wanted if n not in position]
    unexpected = sorted(set(names) - set(wanted))
    if missing or unexpected:
        raise ExportError(
            f"{folder} does not hold the scan's frames: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}; point SOURCE at the masks of this scan")
    return MaskFolder(stack, tuple(position[n] for n in wanted))
