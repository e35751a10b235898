"""Denoising U-Nets: architectures by name, checkpoints, losses, training, fast inference.

>>> from labdct_live.models import get_model, list_models
>>> sorted(list_models())
['compact_s2', 'compact_s4', 'compact_tiny', 'resnet34_unet', 'unet']

See docs/models.md for the architectures, the checkpoint format and the model card.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from labdct_live.models.checkpoint import (
    CheckpointError,
    export_checkpoint,
    load_checkpoint,
    load_model,
    model_from_checkpoint,
    save_checkpoint,
)
from labdct_live.models.inference import Denoiser, denoise, segment_dl
from labdct_live.models.losses import get_loss
from labdct_live.models.registry import DEFAULT_MODEL, get_model, list_models, register_model
from labdct_live.models.resnet_unet import load_resnet34_weights

__all__ = [
    "DEFAULT_MODEL",
    "CheckpointError",
    "Denoiser",
    "PretrainedWeightsNotFoundError",
    "WEIGHTS_DIR",
    "denoise",
    "export_checkpoint",
    "get_loss",
    "get_model",
    "list_models",
    "load_checkpoint",
    "load_model",
    "load_pretrained",
    "load_resnet34_weights",
    "model_from_checkpoint",
    "pretrained_path",
    "register_model",
    "save_checkpoint",
    "segment_dl",
]

#: Folder of the weights shipped inside the package: ``<name>.pt``.
WEIGHTS_DIR = Path(__file__).parent / "weights"


class PretrainedWeightsNotFoundError(FileNotFoundError):
    """The package does not ship weights for the requested model."""


def pretrained_path(name: str = DEFAULT_MODEL) -> Path:
    """Path of the shipped weights of model ``name`` (which may not exist)."""
    return WEIGHTS_DIR / f"{name}.pt"


def load_pretrained(name: str = DEFAULT_MODEL) -> nn.Module:
    """The shipped, trained model (eval mode, CPU), loaded from the package; no network access.

    Parameters
    ----------
    name : str
        Architecture name of a shipped model (default :data:`DEFAULT_MODEL`).

    Returns
    -------
    torch.nn.Module
        The network with ``model.architecture`` and ``model.metadata`` (training, data
        recipe, validation metrics, recommended threshold).

    Raises
    ------
    PretrainedWeightsNotFoundError
        When ``labdct_live/models/weights/<name>.pt`` is not in the installed package.
    """
    path = pretrained_path(name)
    if not path.is_file():
        shipped = sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt")) if WEIGHTS_DIR.is_dir() else []
        raise PretrainedWeightsNotFoundError(
            f"no shipped weights for model {name!r}: {path} is missing "
            f"(shipped: {', '.join(shipped) or 'none'}). Train one with `labdct-live train` "
            "and pass its checkpoint (e.g. OUT/model.pt) as model=..."
        )
    return load_model(path)
