"""Networks by name: each name is an architecture class plus default configuration.

A network built by :func:`get_model` remembers its name and full configuration in
``model.architecture`` so that a checkpoint can rebuild it exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from labdct_live.models.compact import CompactUNet
from labdct_live.models.resnet_unet import ResNet34UNet

__all__ = ["DEFAULT_MODEL", "ModelSpec", "get_model", "list_models", "register_model"]

#: The architecture of the shipped model (:func:`labdct_live.models.load_pretrained`).
DEFAULT_MODEL = "compact_s4"


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: constructor, default keyword arguments, one-line summary."""

    factory: Callable[..., nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    factory: Callable[..., nn.Module],
    defaults: dict[str, Any] | None = None,
    description: str = "",
) -> None:
    """Register an architecture under ``name``.

    Parameters
    ----------
    name : str
        Registry name (stored in checkpoints: never rename a shipped one).
    factory : callable
        Builds the ``nn.Module`` from keyword arguments. The module must define
        ``input_multiple`` (the stride its input size must be a multiple of).
    defaults : dict, optional
        Keyword arguments used unless :func:`get_model` overrides them.
    description : str
        One line for ``labdct-live train --help`` and the docs.
    """
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is already registered")
    _REGISTRY[name] = ModelSpec(factory, dict(defaults or {}), description)


def list_models() -> dict[str, str]:
    """Registered architecture names and their one-line descriptions."""
    return {name: spec.description for name, spec in _REGISTRY.items()}


def get_model(name: str, **config: Any) -> nn.Module:
    """Build a registered network.

    Parameters
    ----------
    name : str
        A name from :func:`list_models`.
    **config
        Overrides of the architecture's default keyword arguments.

    Returns
    -------
    torch.nn.Module
        The network (randomly initialised, training mode) with ``model.architecture`` =
        ``{"name": name, "config": full_config}``.

    Examples
    --------
    >>> from labdct_live.models import get_model
    >>> model = get_model("compact_s4")
    >>> model.architecture["config"]["unshuffle"]
    4
    """
    spec = _REGISTRY.get(name)
    if spec is None:
        raise ValueError(f"unknown model name {name!r}; registered: {', '.join(_REGISTRY)}")
    unknown = set(config) - set(spec.defaults)
    if unknown:
        raise ValueError(
            f"model {name!r} has no option(s) {sorted(unknown)}; options: {sorted(spec.defaults)}"
        )
    full = {**spec.defaults, **config}
    # Plain lists, not tuples: a checkpoint's config round-trips through torch.save unchanged.
    full = {k: list(v) if isinstance(v, tuple) else v for k, v in full.items()}
    model = spec.factory(**full)
    model.architecture = {"name": name, "config": full}
    return model


register_model(
    "resnet34_unet",
    ResNet34UNet,
    {"blur": True, "in_channels": 1},
    "the paper's fastai dynamic U-Net on a ResNet34 encoder (41 M parameters)",
)
register_model(
    "unet",
    CompactUNet,
    {"unshuffle": 1, "widths": [16, 32, 64, 128], "convs_per_level": 2, "separable": False,
     "upsample": "shuffle", "in_channels": 1},
    "plain 4-level U-Net of base width 16 at full resolution (the CPU reference)",
)
register_model(
    "compact_s4",
    CompactUNet,
    {"unshuffle": 4, "widths": [32, 64, 128, 256], "convs_per_level": 2, "separable": False,
     "upsample": "shuffle", "in_channels": 1},
    "compact U-Net: 4x4 space-to-depth stem, widths 32-256, 2 convs per level (1.9 M parameters)",
)
register_model(
    "compact_s2",
    CompactUNet,
    {"unshuffle": 2, "widths": [16, 32, 64, 128], "convs_per_level": 2, "separable": False,
     "upsample": "shuffle", "in_channels": 1},
    "compact U-Net: 2x2 space-to-depth stem, widths 16-128, 2 convs per level (0.5 M parameters)",
)
register_model(
    "compact_tiny",
    CompactUNet,
    {"unshuffle": 4, "widths": [24, 48, 96], "convs_per_level": 1, "separable": False,
     "upsample": "shuffle", "in_channels": 1},
    "smallest: 4x4 space-to-depth stem, widths 24-96, 1 conv per level (0.13 M parameters)",
)
