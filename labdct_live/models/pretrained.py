"""The models shipped inside the package: where their weights are, and loading them."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from labdct_live.models.checkpoint import load_model
from labdct_live.models.registry import DEFAULT_MODEL

__all__ = ["WEIGHTS_DIR", "PretrainedWeightsNotFoundError", "load_pretrained", "pretrained_path"]

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
