"""A compact U-Net for 2-core CPUs: space-to-depth stem, few channels, optional separable convs.

Full-resolution 2032² frames are 4.1 Mpixel: even one 16-channel 3×3 conv at full resolution
costs ~10 GFLOP. The compact U-Net therefore starts with a pixel unshuffle (space-to-depth):
an ``s × s`` block of pixels becomes ``s²`` channels of one pixel, losslessly, so a spot of a
few pixels is still fully represented; all convs run at ``1/s`` resolution or below; and the
head predicts ``s²`` channels that a pixel shuffle puts back into the ``s × s`` block. With
``unshuffle=1`` the same class is a plain U-Net (the 4-level, width-16 reference).

Per level: a stride-2 3×3 conv (the first level: a 3×3 conv on the unshuffled input), then
``convs_per_level - 1`` further 3×3 convs, all conv + BN + ReLU. Decoder: ICNR pixel-shuffle
(or nearest-neighbour) upsampling to the skip's width, concatenation, ``convs_per_level``
convs. ``separable=True`` replaces the 3×3 convs below the first level by depthwise-separable
ones (MobileNet-style).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from labdct_live.models.layers import (
    ConvBnRelu,
    PixelShuffleICNR,
    SeparableConvBnRelu,
    check_input_size,
    init_conv_,
)

# The input-size check stays a call in torch.fx graphs (BN folding traces the model).
torch.fx.wrap("check_input_size")

__all__ = ["CompactUNet"]


class _Upsample(nn.Module):
    """×2 upsampling to ``out_channels``: ICNR pixel shuffle or nearest + 1×1 conv."""

    def __init__(self, in_channels: int, out_channels: int, mode: str):
        super().__init__()
        if mode == "shuffle":
            self.body = PixelShuffleICNR(in_channels, out_channels)
        elif mode == "nearest":
            self.body = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"),
                ConvBnRelu(in_channels, out_channels, kernel_size=1),
            )
        else:
            raise ValueError(f"upsample must be 'shuffle' or 'nearest', got {mode!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class CompactUNet(nn.Module):
    """U-Net with a pixel-unshuffle stem and a pixel-shuffle head (1 channel in, 1 out in [0, 1]).

    Parameters
    ----------
    unshuffle : int
        Space-to-depth factor ``s`` of the stem (1, 2 or 4); the network runs at ``1/s``
        resolution and predicts ``s²`` sub-pixels per position.
    widths : sequence of int
        Channels per level, from the finest; one level per entry (each one halves resolution).
    convs_per_level : int
        3×3 convs per encoder level and per decoder level (1 or 2).
    separable : bool
        Depthwise-separable 3×3 convs below the first level.
    upsample : {"shuffle", "nearest"}
        Decoder upsampling: ICNR pixel shuffle, or nearest neighbour + 1×1 conv.
    in_channels : int
        Input channels (1: grey detector frames).

    Notes
    -----
    Input height and width must be multiples of :attr:`input_multiple`
    (``unshuffle * 2 ** (len(widths) - 1)``); the inference engine pads frames to that.
    """

    def __init__(
        self,
        unshuffle: int = 4,
        widths: Sequence[int] = (24, 48, 96),
        convs_per_level: int = 1,
        separable: bool = False,
        upsample: str = "shuffle",
        in_channels: int = 1,
    ):
        super().__init__()
        widths = [int(w) for w in widths]
        if unshuffle < 1:
            raise ValueError(f"unshuffle must be >= 1, got {unshuffle}")
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths}")
        if convs_per_level < 1:
            raise ValueError(f"convs_per_level must be >= 1, got {convs_per_level}")
        self.input_multiple = unshuffle * 2 ** (len(widths) - 1)

        def conv(cin: int, cout: int, stride: int = 1, level: int = 0) -> nn.Module:
            if separable and level > 0:
                return SeparableConvBnRelu(cin, cout, stride)
            return ConvBnRelu(cin, cout, stride=stride)

        self.unshuffle = nn.PixelUnshuffle(unshuffle) if unshuffle > 1 else nn.Identity()
        stem_channels = in_channels * unshuffle * unshuffle
        self.encoder = nn.ModuleList()
        previous = stem_channels
        for level, width in enumerate(widths):
            stride = 1 if level == 0 else 2
            layers = [conv(previous, width, stride, level)]
            layers += [conv(width, width, 1, level) for _ in range(convs_per_level - 1)]
            self.encoder.append(nn.Sequential(*layers))
            previous = width
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for level in range(len(widths) - 2, -1, -1):
            width = widths[level]
            self.up.append(_Upsample(widths[level + 1], width, upsample))
            layers = [conv(2 * width, width, 1, level)]
            layers += [conv(width, width, 1, level) for _ in range(convs_per_level - 1)]
            self.fuse.append(nn.Sequential(*layers))
        self.head = nn.Conv2d(widths[0], in_channels * unshuffle * unshuffle, 1)
        self.shuffle = nn.PixelShuffle(unshuffle) if unshuffle > 1 else nn.Identity()
        init_conv_(self.encoder)
        init_conv_(self.fuse)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.input_multiple)
        y = self.unshuffle(x)
        skips = []
        for level in self.encoder:
            y = level(y)
            skips.append(y)
        skips.pop()
        for up, fuse in zip(self.up, self.fuse):
            y = fuse(torch.cat([up(y), skips.pop()], dim=1))
        return torch.sigmoid(self.shuffle(self.head(y)))
