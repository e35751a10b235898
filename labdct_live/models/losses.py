"""Training losses, selectable by name; all take a prediction and a target in [0, 1].

A loss is named by its terms joined with ``+``; each term has a weight (default 1)::

    get_loss("paper")        # = "mse+perceptual": the paper's loss (docs/physics.md §9)
    get_loss("mse+dice", weights={"dice": 0.5})
    get_loss("mse+focal", options={"focal": {"gamma": 2.0, "alpha": 0.25}})

Terms
-----
``mse``         pixel mean squared error.
``l1``          pixel mean absolute error.
``bce``         binary cross entropy against the target (soft labels allowed).
``dice``        1 - soft Dice coefficient, per image, averaged over the batch.
``focal``       focal loss (Lin et al. 2017): BCE down-weighted by ``(1 - p_t)**gamma`` so that
                the few hard pixels (weak spots) dominate over the many easy background pixels.
``perceptual``  the feature + Gram loss of Johnson et al. (2016) on a VGG16 loss network:
                for each chosen layer ``j`` with features ``phi_j`` of shape ``C_j × H_j × W_j``,
                ``||phi_j(pred) - phi_j(target)||² / (C_j H_j W_j)`` (feature reconstruction)
                + ``||G_j(pred) - G_j(target)||_F²`` with the Gram matrix
                ``G_j = phi_j phi_j^T / (C_j H_j W_j)`` (style reconstruction), i.e. each term
                normalised by C·H·W as in the paper's Eq. 3.

The VGG16 loss network
----------------------
:class:`VGG16Features` is torchvision's ``vgg16().features`` in plain torch with the same
state-dict keys (``features.0.weight`` ...). ImageNet weights cannot be downloaded here: give a
local torchvision ``vgg16`` state-dict file (``vgg16-397923af.pth``) through
``options={"perceptual": {"weights_path": ...}}`` or the environment variable
``LABDCT_VGG16_WEIGHTS``. Without one, the loss network is a VGG16 with **fixed random weights**
(He initialisation from seed 0, the same on every run); random convolutional features still
compare local structure at several scales, but this is not the paper's ImageNet loss network,
and a warning says so.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LOSS_TERMS",
    "VGG16_LAYERS",
    "VGG16_WEIGHTS_ENV",
    "CompositeLoss",
    "PerceptualLoss",
    "VGG16Features",
    "dice_loss",
    "focal_loss",
    "get_loss",
    "gram_matrix",
]

logger = logging.getLogger(__name__)

#: Environment variable naming a local torchvision ``vgg16`` ImageNet weights file.
VGG16_WEIGHTS_ENV = "LABDCT_VGG16_WEIGHTS"

#: Loss names that stand for a combination of terms.
ALIASES = {"paper": "mse+perceptual"}

# torchvision's vgg16 "features": conv widths, "M" = max pool. Indices of the modules in the
# Sequential (and so the state-dict keys) follow from this list.
_VGG16_CFG = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"
]
#: Index in ``features`` of the ReLU after each named conv (relu{block}_{conv}).
VGG16_LAYERS = {
    "relu1_1": 1, "relu1_2": 3, "relu2_1": 6, "relu2_2": 8, "relu3_1": 11, "relu3_2": 13,
    "relu3_3": 15, "relu4_1": 18, "relu4_2": 20, "relu4_3": 22, "relu5_1": 25, "relu5_2": 27,
    "relu5_3": 29,
}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG16_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=False)]
            channels = item
    return nn.Sequential(*layers)


class VGG16Features(nn.Module):
    """Frozen VGG16 conv features at chosen layers (torchvision key layout ``features.N.*``).

    Parameters
    ----------
    layers : sequence of str
        Names from :data:`VGG16_LAYERS`, e.g. ``("relu3_3", "relu4_3", "relu5_3")``.
    weights_path : path-like, optional
        Local torchvision ``vgg16`` state dict. Default: ``$LABDCT_VGG16_WEIGHTS``; when neither
        is given, fixed random weights (seed 0) are used and a warning is logged.

    Attributes
    ----------
    pretrained : bool
        Whether ImageNet weights were loaded.
    """

    def __init__(self, layers: Sequence[str], weights_path: str | os.PathLike | None = None):
        super().__init__()
        unknown = [name for name in layers if name not in VGG16_LAYERS]
        if unknown or not layers:
            raise ValueError(f"unknown VGG16 layer(s) {unknown}; choose from {list(VGG16_LAYERS)}")
        self.layer_names = list(layers)
        self._indices = [VGG16_LAYERS[name] for name in layers]
        features = _vgg16_features()
        self.pretrained = False
        weights_path = weights_path or os.environ.get(VGG16_WEIGHTS_ENV) or None
        if weights_path is None:
            generator = torch.Generator().manual_seed(0)
            for module in features:
                if isinstance(module, nn.Conv2d):
                    fan_in = module.weight[0].numel()
                    with torch.no_grad():
                        module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
                        module.bias.zero_()
            logger.warning(
                "VGG16 loss network has fixed random weights (seed 0): set %s to a local "
                "torchvision vgg16 weights file for the paper's ImageNet loss network",
                VGG16_WEIGHTS_ENV,
            )
        else:
            self._load(features, Path(weights_path))
            self.pretrained = True
        # Keep torchvision's module indices (state-dict keys) but drop layers past the last use.
        self.features = nn.Sequential(*list(features)[: max(self._indices) + 1])
        self.features.requires_grad_(False)
        self.features.eval()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    @staticmethod
    def _load(features: nn.Sequential, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"VGG16 weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a state dict")
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        try:
            features.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{path} is not a torchvision vgg16 state dict: {exc}") from exc
        logger.info("loaded ImageNet VGG16 loss-network weights from %s", path)

    def train(self, mode: bool = True) -> VGG16Features:
        # The loss network stays in eval mode whatever its owner does.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features at the chosen layers for a ``(B, 1 or 3, H, W)`` image batch in [0, 1]."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        wanted = set(self._indices)
        out = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in wanted:
                out[index] = x
        return [out[index] for index in self._indices]


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram matrices ``phi phi^T / (C H W)`` of a ``(B, C, H, W)`` batch → ``(B, C, C)``."""
    batch, channels, height, width = features.shape
    flat = features.reshape(batch, channels, height * width)
    return flat @ flat.transpose(1, 2) / (channels * height * width)


class PerceptualLoss(nn.Module):
    """Feature + Gram loss on a VGG16 loss network (Johnson et al. 2016), per layer weights.

    Parameters
    ----------
    layers : sequence of str
        VGG16 layers. Default: fastai's choice for its super-resolution feature loss, the
        last ReLU before the 3rd, 4th and 5th max pool (``relu3_3, relu4_3, relu5_3``).
    feature_weights, gram_weights : sequence of float, optional
        Per-layer weights (default 1 each: the plain sum of Eq. 3).
    weights_path : path-like, optional
        Local torchvision vgg16 weights (see :class:`VGG16Features`).
    """

    def __init__(
        self,
        layers: Sequence[str] = ("relu3_3", "relu4_3", "relu5_3"),
        feature_weights: Sequence[float] | None = None,
        gram_weights: Sequence[float] | None = None,
        weights_path: str | os.PathLike | None = None,
    ):
        super().__init__()
        self.network = VGG16Features(layers, weights_path)
        n = len(self.network.layer_names)
        self.feature_weights = list(feature_weights or [1.0] * n)
        self.gram_weights = list(gram_weights or [1.0] * n)
        if len(self.feature_weights) != n or len(self.gram_weights) != n:
            raise ValueError(f"feature_weights and gram_weights need {n} entries (one per layer)")

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target_features = self.network(target)
        total = prediction.new_zeros(())
        for w_feat, w_gram, pred_f, target_f in zip(
            self.feature_weights, self.gram_weights, self.network(prediction), target_features
        ):
            total = total + w_feat * F.mse_loss(pred_f, target_f)
            gram_diff = gram_matrix(pred_f) - gram_matrix(target_f)
            total = total + w_gram * gram_diff.pow(2).sum(dim=(1, 2)).mean()
        return total


def dice_loss(prediction: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - (2 Σ p t + s) / (Σ p + Σ t + s)`` per image, averaged over the batch."""
    dims = tuple(range(1, prediction.ndim))
    intersection = (prediction * target).sum(dims)
    total = prediction.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * intersection + smooth) / (total + smooth)).mean()


def focal_loss(
    prediction: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float = 0.25
) -> torch.Tensor:
    """Binary focal loss ``-alpha_t (1 - p_t)**gamma log(p_t)``, averaged over pixels.

    ``alpha`` weights the positive (spot) pixels and ``1 - alpha`` the background;
    ``alpha < 0`` disables the class weighting.
    """
    p = prediction.clamp(1e-6, 1.0 - 1e-6)
    bce = F.binary_cross_entropy(p, target, reduction="none")
    p_t = p * target + (1.0 - p) * (1.0 - target)
    loss = (1.0 - p_t).pow(gamma) * bce
    if alpha >= 0:
        loss = (alpha * target + (1.0 - alpha) * (1.0 - target)) * loss
    return loss.mean()


def _bce(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy(prediction.clamp(1e-6, 1.0 - 1e-6), target)


class _Term(nn.Module):
    """Wrap a loss function of (prediction, target, **options) as a module."""

    def __init__(self, function, **options):
        super().__init__()
        self.function = function
        self.options = options

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.function(prediction, target, **self.options)


def _make_term(name: str, options: dict) -> nn.Module:
    if name == "perceptual":
        return PerceptualLoss(**options)
    functions = {"mse": F.mse_loss, "l1": F.l1_loss, "bce": _bce, "dice": dice_loss,
                 "focal": focal_loss}
    return _Term(functions[name], **options)


#: Names of the loss terms that :func:`get_loss` combines.
LOSS_TERMS = ("mse", "l1", "bce", "dice", "focal", "perceptual")


class CompositeLoss(nn.Module):
    """Weighted sum of named loss terms; returns the total and each term's value.

    Use :func:`get_loss` to build one.
    """

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float]):
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.weights = dict(weights)

    def forward(
        self, prediction: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss (a scalar tensor for ``backward``) and ``{term: value}`` for logging."""
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}"
            )
        total = prediction.new_zeros(())
        parts = {}
        for name, term in self.terms.items():
            value = term(prediction, target)
            parts[name] = float(value.detach())
            total = total + self.weights[name] * value
        return total, parts


def get_loss(
    name: str = "mse+dice",
    weights: dict[str, float] | None = None,
    options: dict[str, dict] | None = None,
) -> CompositeLoss:
    """Build a loss from its name.

    Parameters
    ----------
    name : str
        Terms joined by ``+`` (from :data:`LOSS_TERMS`), or ``"paper"`` (= ``"mse+perceptual"``).
    weights : dict, optional
        Weight per term (default 1).
    options : dict of dict, optional
        Keyword arguments per term, e.g. ``{"focal": {"gamma": 2}}`` or
        ``{"perceptual": {"weights_path": "vgg16.pth"}}``.

    Returns
    -------
    CompositeLoss
        ``loss(prediction, target) -> (total, {term: value})``.

    Examples
    --------
    >>> import torch
    >>> loss = get_loss("mse+dice")
    >>> target = torch.zeros(1, 1, 8, 8); target[..., 2:4, 2:4] = 1
    >>> total, parts = loss(target.clone(), target)
    >>> round(parts["mse"], 6), round(parts["dice"], 6)
    (0.0, 0.0)
    """
    spec = ALIASES.get(name, name)
    names = [part.strip() for part in spec.split("+") if part.strip()]
    unknown = [part for part in names if part not in LOSS_TERMS]
    if unknown or not names:
        raise ValueError(
            f"unknown loss term(s) {unknown} in {name!r}; terms: {', '.join(LOSS_TERMS)} "
            f"(joined by '+'), aliases: {', '.join(ALIASES)}"
        )
    weights = dict(weights or {})
    options = dict(options or {})
    stray = (set(weights) | set(options)) - set(names)
    if stray:
        raise ValueError(f"weights/options given for term(s) {sorted(stray)} not in loss {name!r}")
    terms = {part: _make_term(part, dict(options.get(part, {}))) for part in names}
    return CompositeLoss(terms, {part: float(weights.get(part, 1.0)) for part in names})
