"""Denoising U-Nets: architectures by name, checkpoints, losses, training, fast inference.

>>> from labdct_live.models import get_model, list_models
>>> sorted(list_models())
['compact_s2', 'compact_s4', 'compact_tiny', 'resnet34_unet', 'unet']

See docs/models.md for the architectures, the checkpoint format and the model card.
"""

from __future__ import annotations

from labdct_live.models.checkpoint import (
    CheckpointError,
    export_checkpoint,
    load_checkpoint,
    load_model,
    model_from_checkpoint,
    save_checkpoint,
)
from labdct_live.models.domain import DomainCheck, domain_ranges, input_statistics
from labdct_live.models.inference import Denoiser, denoise, segment_dl
from labdct_live.models.losses import get_loss
from labdct_live.models.pretrained import (
    WEIGHTS_DIR,
    PretrainedWeightsNotFoundError,
    load_pretrained,
    pretrained_path,
)
from labdct_live.models.registry import DEFAULT_MODEL, get_model, list_models, register_model
from labdct_live.models.resnet_unet import load_resnet34_weights

__all__ = [
    "DEFAULT_MODEL",
    "CheckpointError",
    "Denoiser",
    "DomainCheck",
    "PretrainedWeightsNotFoundError",
    "WEIGHTS_DIR",
    "denoise",
    "domain_ranges",
    "export_checkpoint",
    "get_loss",
    "get_model",
    "input_statistics",
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
