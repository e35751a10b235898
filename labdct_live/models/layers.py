"""Building blocks shared by the networks: conv + batch norm + ReLU, ICNR pixel-shuffle upsampling.

ICNR initialisation (Aitken et al. 2017, "Checkerboard artifact free sub-pixel convolution")
makes a conv followed by ``PixelShuffle(s)`` start out as a nearest-neighbour upsampling: every
group of ``s**2`` output channels that the shuffle spreads over one ``s x s`` block gets the same
kernel, so the freshly initialised upsampler cannot draw a checkerboard.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "ConvBnRelu",
    "PixelShuffleICNR",
    "SeparableConvBnRelu",
    "check_input_size",
    "icnr_",
    "init_conv_",
]


def check_input_size(x: torch.Tensor, multiple: int) -> None:
    """Raise a clear error unless ``x`` is ``(B, C, H, W)`` with H, W multiples of ``multiple``."""
    if x.ndim != 4 or x.shape[-2] % multiple or x.shape[-1] % multiple:
        raise ValueError(
            f"input of shape {tuple(x.shape)}: expected (batch, channels, height, width) with "
            f"height and width multiples of {multiple} (labdct_live.models.denoise pads frames)"
        )


def init_conv_(module: nn.Module) -> None:
    """Kaiming-normal (fan-in, ReLU) initialisation of every conv in ``module``, zero biases."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def icnr_(weight: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """Initialise, in place, a conv weight that feeds ``PixelShuffle(scale)`` with ICNR.

    Parameters
    ----------
    weight : torch.Tensor
        Conv weight of shape ``(out_channels, in_channels, kh, kw)`` with ``out_channels``
        divisible by ``scale**2``.
    scale : int
        Upsampling factor of the pixel shuffle.

    Returns
    -------
    torch.Tensor
        ``weight``, initialised.
    """
    out_channels, in_channels, kh, kw = weight.shape
    if out_channels % (scale * scale):
        raise ValueError(
            f"icnr_: out_channels={out_channels} is not divisible by scale**2={scale * scale}"
        )
    base = torch.empty(out_channels // (scale * scale), in_channels, kh, kw)
    nn.init.kaiming_normal_(base, nonlinearity="relu")
    # PixelShuffle sends channel c*s*s + i to sub-pixel i of output channel c: repeat each
    # base kernel s*s times in a row so that all sub-pixels of a block start identical.
    with torch.no_grad():
        weight.copy_(base.repeat_interleave(scale * scale, dim=0))
    return weight


class ConvBnRelu(nn.Sequential):
    """``Conv2d`` (no bias) → ``BatchNorm2d`` → ``ReLU``, "same" padding (fastai's ConvLayer)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SeparableConvBnRelu(nn.Sequential):
    """Depthwise 3×3 conv → pointwise 1×1 conv → ``BatchNorm2d`` → ``ReLU`` (MobileNet style)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(
                in_channels, in_channels, 3, stride, padding=1, groups=in_channels, bias=False
            ),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class PixelShuffleICNR(nn.Module):
    """Upsample ×``scale``: 1×1 conv + BN + ReLU to ``out_channels * scale**2``, pixel shuffle.

    As fastai's ``PixelShuffle_ICNR`` with batch norm: the conv is ICNR-initialised, and with
    ``blur=True`` a replication pad + 2×2 average (stride 1) smooths the shuffled output, the
    second remedy against checkerboard artefacts.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int = 2, blur: bool = False):
        super().__init__()
        self.conv = ConvBnRelu(in_channels, out_channels * scale * scale, kernel_size=1)
        icnr_(self.conv[0].weight, scale)
        self.shuffle = nn.PixelShuffle(scale)
        self.blur = (
            nn.Sequential(nn.ReplicationPad2d((1, 0, 1, 0)), nn.AvgPool2d(2, stride=1))
            if blur
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blur(self.shuffle(self.conv(x)))
