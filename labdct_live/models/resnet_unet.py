"""The paper's network: a fastai-style "dynamic U-Net" on a ResNet34 encoder, in plain torch.

Encoder: ResNet34 (BasicBlock layers 3-4-6-3) with torchvision's parameter names
(``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0`` ...), so that a torchvision
ImageNet ``resnet34`` state dict loads into :attr:`ResNet34UNet.encoder` with
:func:`load_resnet34_weights`. The 1-channel input enters a stem whose ImageNet RGB kernels are
summed over colour (equivalent to replicating the grey frame to three channels).

Decoder, as fastai's ``DynamicUnet`` (Howard & Gugger 2020) built on this encoder: batch norm +
ReLU + two convs at the bottleneck; at each of the four resolution changes a ``UnetBlock``
(ICNR pixel-shuffle upsampling to half the channels, batch-normed skip features concatenated,
ReLU, two 3×3 conv + BN + ReLU); a last pixel shuffle back to the input resolution; the input
concatenated ("last cross"); a residual block; a final 1×1 conv + BN; a sigmoid to [0, 1].
That is 54 conv layers (36 in the encoder), as in the paper (docs/physics.md §9).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from labdct_live.models.layers import ConvBnRelu, PixelShuffleICNR, check_input_size, init_conv_

# The input-size check stays a call in torch.fx graphs (BN folding traces the model).
torch.fx.wrap("check_input_size")

__all__ = ["RESNET34_WEIGHTS_ENV", "ResNet34Encoder", "ResNet34UNet", "load_resnet34_weights"]

logger = logging.getLogger(__name__)

#: Environment variable naming a local torchvision ``resnet34`` ImageNet weights file.
RESNET34_WEIGHTS_ENV = "LABDCT_RESNET34_WEIGHTS"


class BasicBlock(nn.Module):
    """ResNet basic block (two 3×3 convs) with torchvision's attribute names."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet34Encoder(nn.Module):
    """ResNet34 without its classifier; returns the features at strides 2, 4, 8, 16 and 32."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, 64, 3, 1)
        self.layer2 = self._make_layer(64, 128, 4, 2)
        self.layer3 = self._make_layer(128, 256, 6, 2)
        self.layer4 = self._make_layer(256, 512, 3, 2)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _make_layer(in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, channels, stride)]
        layers += [BasicBlock(channels, channels) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        f4 = self.layer1(self.maxpool(stem))
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        f32 = self.layer4(f16)
        return [stem, f4, f8, f16, f32]


class UnetBlock(nn.Module):
    """fastai's ``UnetBlock``: upsample, concatenate batch-normed skip, ReLU, two convs."""

    def __init__(self, up_channels: int, skip_channels: int, final_div: bool, blur: bool):
        super().__init__()
        self.shuf = PixelShuffleICNR(up_channels, up_channels // 2, blur=blur)
        self.bn = nn.BatchNorm2d(skip_channels)
        channels = up_channels // 2 + skip_channels
        out_channels = channels if final_div else channels // 2
        self.conv1 = ConvBnRelu(channels, out_channels)
        self.conv2 = ConvBnRelu(out_channels, out_channels)
        self.out_channels = out_channels

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.shuf(up)
        x = F.relu(torch.cat([x, self.bn(skip)], dim=1))
        return self.conv2(self.conv1(x))


class ResBlock(nn.Module):
    """fastai's ``ResBlock(1, n, n)``: two 3×3 convs (the second's BN starts at zero) + identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvBnRelu(channels, channels)
        self.conv2 = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        )
        nn.init.zeros_(self.conv2[1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + x)


class ResNet34UNet(nn.Module):
    """The paper's dynamic U-Net on a ResNet34 encoder (1 channel in, 1 channel out in [0, 1]).

    Parameters
    ----------
    blur : bool
        Blur after each pixel shuffle except the last (fastai ``blur=True``, as in its
        super-resolution lesson that the paper's recipe follows).
    in_channels : int
        Input channels (1: grey detector frames).

    Notes
    -----
    Input height and width must be multiples of :attr:`input_multiple` (32); the inference
    engine pads frames to that.
    """

    input_multiple = 32

    def __init__(self, blur: bool = True, in_channels: int = 1):
        super().__init__()
        self.encoder = ResNet34Encoder(in_channels)
        self.middle = nn.Sequential(
            nn.BatchNorm2d(512), nn.ReLU(), ConvBnRelu(512, 1024), ConvBnRelu(1024, 512)
        )
        blocks, up_channels = [], 512
        skip_channels = [256, 128, 64, 64]  # strides 16, 8, 4, 2
        for i, skip in enumerate(skip_channels):
            final = i == len(skip_channels) - 1
            block = UnetBlock(up_channels, skip, final_div=not final, blur=blur and not final)
            blocks.append(block)
            up_channels = block.out_channels
        self.decoder = nn.ModuleList(blocks)
        self.upsample = PixelShuffleICNR(up_channels, up_channels)  # stride 2 -> full resolution
        cross = up_channels + in_channels
        self.res_block = ResBlock(cross)
        self.head = nn.Sequential(nn.Conv2d(cross, 1, 1, bias=False), nn.BatchNorm2d(1))
        for part in (self.middle, self.res_block.conv1, self.head):
            init_conv_(part)
        for block in self.decoder:
            init_conv_(block.conv1)
            init_conv_(block.conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.input_multiple)
        features = self.encoder(x)
        y = self.middle(features[-1])
        for block, skip in zip(self.decoder, reversed(features[:-1])):
            y = block(y, skip)
        y = torch.cat([self.upsample(y), x], dim=1)
        return torch.sigmoid(self.head(self.res_block(y)))


def load_resnet34_weights(model: ResNet34UNet, path: str | os.PathLike | None = None) -> Path:
    """Load torchvision ImageNet ``resnet34`` weights from a local file into the encoder.

    Parameters
    ----------
    model : ResNet34UNet
        The network whose encoder receives the weights.
    path : path-like, optional
        A ``torch.save``-d torchvision ``resnet34`` state dict (e.g. ``resnet34-b627a593.pth``).
        Default: the file named by the environment variable ``LABDCT_RESNET34_WEIGHTS``.

    Returns
    -------
    pathlib.Path
        The file that was loaded.

    Raises
    ------
    FileNotFoundError
        When no file is given or found (nothing is downloaded).
    ValueError
        When the file is not a torchvision resnet34 state dict.
    """
    if path is None:
        path = os.environ.get(RESNET34_WEIGHTS_ENV)
        if not path:
            raise FileNotFoundError(
                f"no ResNet34 ImageNet weights: pass a path or set {RESNET34_WEIGHTS_ENV} to a "
                "local torchvision resnet34 state-dict file (nothing is downloaded)"
            )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ResNet34 weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    stem = state.get("conv1.weight")
    in_channels = model.encoder.conv1.in_channels
    if stem is not None and stem.shape[1] == 3 and in_channels == 1:
        # Grey input = the same image in R, G and B: the RGB kernels add up.
        state["conv1.weight"] = stem.sum(dim=1, keepdim=True)
    try:
        model.encoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path} is not a torchvision resnet34 state dict: {exc}") from exc
    model.encoder_pretrained = True  # the training loop freezes, then unfreezes, such encoders
    logger.info("loaded ImageNet ResNet34 encoder weights from %s", path)
    return path
