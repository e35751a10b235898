"""Checkpoints: one ``torch.save``-d dict of plain Python values and tensors.

A checkpoint loads with ``torch.load(path, weights_only=True)`` (no pickled code runs) and holds::

    format            "labdct-live-checkpoint"
    format_version    1
    architecture      {"name": registry name, "config": {constructor keyword arguments}}
    state_dict        the network's weights and batch-norm statistics
    training          training configuration (dict)
    data              data recipe: how the training pairs were made (dict)
    metrics           validation metrics of these weights (dict)
    inference         e.g. {"threshold": 0.5, "normalization": "..."} (dict)
    package_version   labdct_live.__version__ at save time
    torch_version     torch.__version__ at save time
    created           ISO 8601 UTC time stamp
    train_state       optional: optimizer state, step, RNG states, history (for resume)

Files are written to a temporary name in the same folder and renamed, so an interrupted save
never leaves a truncated file under the final name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from labdct_live import __version__
from labdct_live.io.output import atomic_file
from labdct_live.models.registry import get_model, list_models

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "export_checkpoint",
    "file_sha256",
    "load_checkpoint",
    "load_model",
    "model_from_checkpoint",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

#: ``format`` and ``format_version`` stored in every checkpoint.
CHECKPOINT_FORMAT = "labdct-live-checkpoint"
#: See :data:`CHECKPOINT_FORMAT`.
CHECKPOINT_VERSION = 1
_REQUIRED = ("format", "format_version", "architecture", "state_dict")


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, not ours, or does not fit its architecture."""


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain Python values and tensors (what ``weights_only`` loading accepts)."""
    if isinstance(value, np.generic):  # before float: np.float64 subclasses float
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item, where) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item, f"{where}[{key!r}]") for key, item in value.items()}
    raise TypeError(
        f"checkpoint entry {where} is a {type(value).__name__}: store plain values "
        "(str, int, float, bool, None, lists, dicts, tensors, numpy arrays) only"
    )


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    training: dict | None = None,
    data: dict | None = None,
    metrics: dict | None = None,
    inference: dict | None = None,
    train_state: dict | None = None,
) -> Path:
    """Write a checkpoint of ``model`` and its provenance.

    Parameters
    ----------
    path : path-like
        Destination file (conventionally ``*.pt``); its folder is created.
    model : torch.nn.Module
        A network built by :func:`labdct_live.models.get_model` (it carries
        ``model.architecture``).
    training, data, metrics, inference : dict, optional
        Training configuration, data recipe, validation metrics, inference settings
        (e.g. the recommended ``threshold``). Plain values only (str, int, float, bool, None,
        lists, dicts, tensors).
    train_state : dict, optional
        Optimizer state, step, RNG states ... needed to resume training.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    architecture = getattr(model, "architecture", None)
    if not isinstance(architecture, dict) or "name" not in architecture:
        raise ValueError(
            "model has no 'architecture' record: build it with labdct_live.models.get_model()"
        )
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "architecture": _plain(
            {"name": architecture["name"], "config": dict(architecture["config"])}, "architecture"
        ),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "training": _plain(dict(training or {}), "training"),
        "data": _plain(dict(data or {}), "data"),
        "metrics": _plain(dict(metrics or {}), "metrics"),
        "inference": _plain(dict(inference or {}), "inference"),
        "package_version": __version__,
        "torch_version": str(torch.__version__),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if train_state is not None:
        payload["train_state"] = _plain(train_state, "train_state")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as partial:
        torch.save(payload, partial)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : path-like
        The checkpoint file.
    map_location : str or torch.device
        Where tensors are loaded.

    Returns
    -------
    dict
        The checkpoint (see the module docstring for its keys).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    CheckpointError
        The file is corrupt or truncated, not a labdct-live checkpoint, or from a newer format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path} (corrupt or truncated, not a torch.save file, or "
            f"holding objects other than plain values and tensors): {exc}"
        ) from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a labdct-live checkpoint (no format marker {CHECKPOINT_FORMAT!r}); "
            "for a bare torchvision state dict use load_resnet34_weights"
        )
    missing = [key for key in _REQUIRED if key not in checkpoint]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks required entries {missing}")
    version = checkpoint["format_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"checkpoint {path}: format_version is {version!r}, expected an "
                              "integer")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, newer than "
            f"this labdct-live ({__version__}) reads ({CHECKPOINT_VERSION}): upgrade labdct-live"
        )
    _check_structure(checkpoint, f"checkpoint {path}")
    return checkpoint


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _check_structure(checkpoint: dict, source: str) -> None:
    """Raise :class:`CheckpointError` unless the entries have the documented types.

    ``weights_only`` loading guarantees plain values, not the layout; a hand-made or damaged
    file would otherwise fail later with a TypeError or AttributeError far from its cause.
    """
    architecture = checkpoint["architecture"]
    if not isinstance(architecture, dict):
        raise CheckpointError(
            f"{source}: 'architecture' is a {_type_name(architecture)} ({architecture!r:.60}), "
            "expected a dict {'name': registry name, 'config': {...}}")
    if not isinstance(architecture.get("name"), str):
        raise CheckpointError(f"{source}: architecture 'name' is "
                              f"{architecture.get('name')!r}, expected a registry name (str)")
    if not isinstance(architecture.get("config", {}), dict):
        raise CheckpointError(f"{source}: architecture 'config' is a "
                              f"{_type_name(architecture['config'])}, expected a dict")
    state = checkpoint["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: 'state_dict' is a {_type_name(state)}, expected a "
                              "dict of tensors")
    bad = [key for key, value in state.items()
           if not isinstance(key, str) or not isinstance(value, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: 'state_dict' entries {bad[:3]} are not named tensors")
    for key in ("training", "data", "metrics", "inference"):
        value = checkpoint.get(key)
        if value is not None and not isinstance(value, dict):
            raise CheckpointError(f"{source}: '{key}' is a {_type_name(value)}, expected a dict")
    threshold = (checkpoint.get("inference") or {}).get("threshold")
    if threshold is not None and (isinstance(threshold, bool)
                                  or not isinstance(threshold, (int, float))
                                  or not 0.0 <= threshold < 1.0):
        raise CheckpointError(f"{source}: inference threshold {threshold!r} is not a number "
                              "in [0, 1)")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (identifies the exact weights a result was made with)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_from_checkpoint(checkpoint: dict, source: str = "checkpoint") -> nn.Module:
    """Rebuild the network of a loaded checkpoint and load its weights (eval mode, on CPU).

    The returned module carries ``model.architecture`` and ``model.metadata`` (the checkpoint's
    ``training``, ``data``, ``metrics``, ``inference``, ``package_version`` and ``created``).

    Raises
    ------
    CheckpointError
        Unknown architecture name, invalid configuration, or weights that do not fit.
    """
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in _REQUIRED):
        raise CheckpointError(f"{source} is not a labdct-live checkpoint dict with entries "
                              f"{list(_REQUIRED)}")
    _check_structure(checkpoint, source)
    name = checkpoint["architecture"]["name"]
    config = checkpoint["architecture"].get("config", {})
    if name not in list_models():
        raise CheckpointError(
            f"{source} uses architecture {name!r}, unknown to this labdct-live "
            f"({__version__}); known: {', '.join(list_models())}"
        )
    try:
        model = get_model(name, **config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: cannot build {name!r} with {config}: {exc}") from exc
    try:
        result = model.load_state_dict(checkpoint["state_dict"], strict=False)
    except RuntimeError as exc:  # tensor shapes differ
        raise CheckpointError(
            f"{source}: weights do not match architecture {name!r} {config}: {exc}"
        ) from exc
    problems = []
    if result.missing_keys:
        problems.append(f"missing {result.missing_keys[:5]}")
    if result.unexpected_keys:
        problems.append(f"unexpected {result.unexpected_keys[:5]}")
    if problems:
        raise CheckpointError(
            f"{source}: weights do not match architecture {name!r} ({'; '.join(problems)})"
        )
    model.eval()
    model.metadata = {
        key: checkpoint.get(key)
        for key in ("training", "data", "metrics", "inference", "package_version", "created")
    }
    return model


def load_model(path: str | os.PathLike) -> nn.Module:
    """Load a network from a checkpoint file (eval mode, on CPU).

    Parameters
    ----------
    path : path-like
        A checkpoint written by :func:`save_checkpoint` (e.g. ``best.pt`` of a training run).

    Returns
    -------
    torch.nn.Module
        The network, with ``model.architecture`` and ``model.metadata`` (which also holds
        ``file`` and ``sha256``, the file's SHA-256).

    Raises
    ------
    FileNotFoundError, CheckpointError
        See :func:`load_checkpoint` and :func:`model_from_checkpoint`.
    """
    model = model_from_checkpoint(load_checkpoint(path), source=f"checkpoint {path}")
    # Which file, exactly, the weights came from (recorded by e.g. segment --method dl).
    model.metadata.update(file=str(path), sha256=file_sha256(path))
    return model


def export_checkpoint(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    threshold: float | None = None,
    metrics: dict | None = None,
    half: bool = True,
) -> Path:
    """Write a checkpoint for shipping: weights and provenance only, optionally in float16.

    Use it to turn a training run's ``model.pt`` into ``labdct_live/models/weights/<name>.pt``
    with the threshold and metrics measured on held-out data.

    Parameters
    ----------
    source, destination : path-like
        A checkpoint, and the file to write.
    threshold : float, optional
        Recommended threshold on the [0, 1] output (``inference.threshold``).
    metrics : dict, optional
        Entries added to (or replacing those of) the checkpoint's ``metrics``.
    half : bool
        Store floating-point tensors as float16 (half the file size; they are converted back
        to float32 on loading, a relative change of ~1e-3 of each weight).

    Returns
    -------
    pathlib.Path
        The written file.
    """
    checkpoint = load_checkpoint(source)
    model = model_from_checkpoint(checkpoint, source=f"checkpoint {source}")
    inference = dict(checkpoint.get("inference") or {})
    if threshold is not None:
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        inference["threshold"] = float(threshold)
    path = save_checkpoint(destination, model, training=checkpoint.get("training"),
                           data=checkpoint.get("data"),
                           metrics={**(checkpoint.get("metrics") or {}), **(metrics or {})},
                           inference=inference)
    if half:
        payload = torch.load(path, weights_only=True)
        payload["state_dict"] = {
            key: value.half() if value.is_floating_point() else value
            for key, value in payload["state_dict"].items()
        }
        with atomic_file(path) as partial:
            torch.save(payload, partial)
    return path
