"""The training loop: AdamW, one-cycle or cosine schedule, validation, checkpoints, resume.

Data: ``train_data`` is either a function ``step -> (inputs, targets)`` (preferred: a resumed
run then sees exactly the batches an uninterrupted run would) or an iterable of
``(inputs, targets)`` batches (on resume, the batches already used are skipped by drawing
them again). Batches are arrays or tensors of shape ``(B, H, W)`` or ``(B, 1, H, W)``: inputs
normalised as :func:`labdct_live.training.synthesis.normalize_frame` does, targets in [0, 1].
``val_data`` is a fixed sequence of such batches.

Files in the output folder::

    config.json        training configuration and data recipe (written first, updated on resume)
    last.pt            latest checkpoint with optimizer and RNG state (resume from it)
    best.pt            weights with the best validation score so far
    history.json       per-step training loss and learning rate, every validation's metrics
    loss_curves.png    training and validation loss, validation F1 / IoU against step
    model.pt           the final model (best weights, no optimizer state): written last

The learning rate is a pure function of the step (:func:`learning_rate`), so the schedule
needs no state of its own to resume. With a pretrained encoder and
``freeze_encoder_steps > 0`` the encoder (except its batch norms) is frozen for those steps,
with its own one-cycle, then everything trains with a second cycle, as fastai's
``fit_one_cycle`` / ``unfreeze`` / ``fit_one_cycle`` recipe that the paper used.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from labdct_live.io.output import atomic_file
from labdct_live.models.checkpoint import load_checkpoint, save_checkpoint
from labdct_live.models.domain import domain_ranges
from labdct_live.models.inference import resolve_device
from labdct_live.models.losses import get_loss
from labdct_live.models.registry import DEFAULT_MODEL

__all__ = ["TrainConfig", "learning_rate", "train", "validate"]

logger = logging.getLogger(__name__)

Batch = tuple[Any, Any]


@dataclass
class TrainConfig:
    """Training configuration (stored in every checkpoint).

    Attributes
    ----------
    model, model_config
        Registry name and architecture options (:func:`labdct_live.models.get_model`).
    loss, loss_weights, loss_options
        Loss name and its term weights / options (:func:`labdct_live.models.get_loss`).
    steps
        Optimizer steps in all.
    lr, weight_decay
        Peak learning rate and AdamW weight decay.
    schedule
        ``"onecycle"`` (fastai: cosine warm-up from ``lr/25`` over ``warmup_fraction`` of the
        cycle, cosine decay to ``lr/25/1e4``) or ``"cosine"`` (cosine decay from ``lr`` to 0).
    freeze_encoder_steps
        Steps with a frozen encoder (only when it has pretrained weights).
    encoder_lr_factor
        Encoder learning rate relative to ``lr`` once unfrozen (pretrained encoders only).
    val_every
        Validate (and write ``last.pt``) every this many steps, and at the end.
    patience, min_delta, monitor
        Early stopping: stop after ``patience`` validations without an improvement of
        ``monitor`` by more than ``min_delta`` (None: never). Metrics whose name contains
        "loss" or "mse" improve downwards, others upwards.
    threshold
        Threshold on the output for the validation F1 / IoU (and recommended for inference).
    grad_clip
        Maximum gradient norm (None: no clipping).
    seed
        Seed of torch's generators at the start of training.
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    channels_last
        Channels-last memory layout for the network and batches (2-5× faster steps for the
        compact networks on CPU; the same numbers up to float rounding).
    """

    model: str = DEFAULT_MODEL
    model_config: dict = field(default_factory=dict)
    loss: str = "mse+dice"
    loss_weights: dict = field(default_factory=dict)
    loss_options: dict = field(default_factory=dict)
    steps: int = 6000
    lr: float = 1e-3
    weight_decay: float = 1e-2
    schedule: str = "onecycle"
    warmup_fraction: float = 0.25
    freeze_encoder_steps: int = 0
    encoder_lr_factor: float = 0.1
    val_every: int = 250
    patience: int | None = 10
    min_delta: float = 0.0
    monitor: str = "val_loss"
    threshold: float = 0.5
    grad_clip: float | None = 1.0
    seed: int = 0
    device: str = "auto"
    channels_last: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.val_every < 1:
            raise ValueError(f"val_every must be >= 1, got {self.val_every}")
        if self.schedule not in ("onecycle", "cosine"):
            raise ValueError(f"schedule must be 'onecycle' or 'cosine', got {self.schedule!r}")
        if not 0.0 < self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in (0, 1), got {self.warmup_fraction}")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {self.threshold}")

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Build from a dict, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def _cosine(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * fraction))


def learning_rate(step: int, config: TrainConfig, freeze_steps: int = 0) -> float:
    """Learning rate at ``step`` (0-based) of the schedule of ``config``.

    With ``freeze_steps > 0`` the schedule restarts (a second cycle) at ``freeze_steps``.
    """
    if 0 < freeze_steps < config.steps:
        start, length = (0, freeze_steps) if step < freeze_steps else (
            freeze_steps, config.steps - freeze_steps
        )
    else:
        start, length = 0, config.steps
    t = (step - start) / max(length, 1)
    if config.schedule == "cosine":
        return _cosine(config.lr, 0.0, t)
    warm = config.warmup_fraction
    if t < warm:
        return _cosine(config.lr / 25.0, config.lr, t / warm)
    return _cosine(config.lr, config.lr / 25.0 / 1e4, (t - warm) / (1.0 - warm))


def _as_tensor(array: Any, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(array) if not torch.is_tensor(array) else array)
    tensor = tensor.to(device=device, dtype=torch.float32)
    if tensor.ndim == 3:
        tensor = tensor[:, None]
    if tensor.ndim != 4 or tensor.shape[1] != 1:
        raise ValueError(
            f"a batch must have shape (B, H, W) or (B, 1, H, W), got {tuple(tensor.shape)}"
        )
    if channels_last:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def _pixel_scores(prediction: torch.Tensor, target: torch.Tensor, threshold: float) -> np.ndarray:
    predicted, true = prediction > threshold, target > 0.5
    return np.array([
        float((predicted & true).sum()), float((predicted & ~true).sum()),
        float((~predicted & true).sum()),
    ])


def validate(
    model: nn.Module,
    loss_fn: nn.Module,
    batches: Sequence[Batch],
    device: str | torch.device = "cpu",
    threshold: float = 0.5,
    channels_last: bool = False,
) -> dict[str, float]:
    """Mean loss and pixel-level scores of ``model`` on fixed batches.

    Returns
    -------
    dict
        ``val_loss``, ``val_<term>`` for each loss term, and pixel ``precision``, ``recall``,
        ``f1`` and ``iou`` of ``output > threshold`` against ``target > 0.5``.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    counts = np.zeros(3)
    n = 0
    with torch.no_grad():
        for inputs, targets in batches:
            x, y = _as_tensor(inputs, device, channels_last), _as_tensor(targets, device)
            prediction = model(x)
            loss, parts = loss_fn(prediction, y)
            values = {"val_loss": float(loss), **{f"val_{k}": v for k, v in parts.items()}}
            for key, value in values.items():
                totals[key] = totals.get(key, 0.0) + value
            counts += _pixel_scores(prediction, y, threshold)
            n += 1
    model.train(was_training)
    if n == 0:
        raise ValueError("validation data is empty")
    metrics = {key: value / n for key, value in totals.items()}
    tp, fp, fn = counts
    metrics["precision"] = tp / (tp + fp) if tp + fp else 0.0
    metrics["recall"] = tp / (tp + fn) if tp + fn else 0.0
    metrics["f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    metrics["iou"] = tp / (tp + fp + fn) if tp + fp + fn else 1.0
    return metrics


def _lower_is_better(metric: str) -> bool:
    return "loss" in metric or "mse" in metric


def _set_encoder_frozen(model: nn.Module, frozen: bool) -> None:
    encoder = getattr(model, "encoder", None)
    for module in encoder.modules() if encoder is not None else []:
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue  # batch norms keep adapting, as fastai's train_bn
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad_(not frozen)


def _write_json(path: Path, value: Any) -> None:
    with atomic_file(path) as partial:
        partial.write_text(json.dumps(value, indent=1))


def _plot_curves(path: Path, history: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 4))
    FigureCanvasAgg(figure)
    loss_axes, score_axes = figure.subplots(1, 2)
    if history["train"]:
        steps, losses = np.array([(step, loss) for step, loss, _ in history["train"]]).T
        loss_axes.plot(steps, losses, color="0.75", lw=0.5, label="train (per step)")
        window = max(1, len(losses) // 50)
        if window > 1:
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            loss_axes.plot(steps[window - 1 :], smooth, color="C0",
                           label=f"train (mean of {window})")
    if history["val"]:
        val_steps = [v["step"] for v in history["val"]]
        loss_axes.plot(val_steps, [v["val_loss"] for v in history["val"]], "o-", color="C1",
                       label="validation")
        for key, color in (("f1", "C2"), ("iou", "C3")):
            score_axes.plot(val_steps, [v[key] for v in history["val"]], "o-", color=color,
                            label=f"pixel {key}")
    loss_axes.set(xlabel="step", ylabel="loss", yscale="log", title="loss")
    score_axes.set(xlabel="step", ylabel="score", ylim=(0, 1), title="validation")
    for axes in (loss_axes, score_axes):
        if axes.lines:
            axes.legend(fontsize=8)
    figure.tight_layout()
    with atomic_file(path) as partial:
        figure.savefig(partial, dpi=100, format="png")


def _config_matches(saved: dict, config: TrainConfig) -> list[str]:
    """Names of settings that differ from the run being resumed."""
    defaults = asdict(TrainConfig())
    current = asdict(config)
    # Steps and stopping criteria may change when a run is extended; the rest may not (the
    # validation interval is also the on-the-fly data's restart interval). A setting newer
    # than the run's record must have its default value.
    free = {"steps", "patience", "min_delta", "device"}
    return [k for k in current
            if k not in free and saved.get(k, defaults[k]) != current[k]]


def train(
    model: nn.Module,
    train_data: Callable[[int], Batch] | Iterable[Batch],
    val_data: Sequence[Batch],
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    data_recipe: dict | None = None,
    extra_metrics: Callable[[nn.Module], dict[str, float]] | None = None,
    record: dict | None = None,
    progress: bool = True,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Train ``model`` and write checkpoints, history and loss curves to ``out_dir``.

    Parameters
    ----------
    model : torch.nn.Module
        Built with :func:`labdct_live.models.get_model` (name and config must match
        ``config.model`` / ``config.model_config``); for a pretrained ResNet34 encoder,
        load it first with :func:`labdct_live.models.load_resnet34_weights`.
    train_data : callable or iterable
        ``step -> (inputs, targets)`` or an iterable of batches (see the module docstring).
    val_data : sequence of (inputs, targets)
        Fixed held-out batches.
    config : TrainConfig
        Training configuration.
    out_dir : path-like
        Output folder (created). Without ``resume`` it must not hold a previous run.
    resume : bool
        Continue the run in ``out_dir`` from ``last.pt``.
    data_recipe : dict, optional
        How the data was made (stored in every checkpoint).
    extra_metrics : callable, optional
        ``model -> {name: value}`` evaluated at each validation (e.g. spot-level F1); its
        names may be used as ``config.monitor``.
    record : dict, optional
        Extra JSON-able entries for ``config.json`` (e.g. the command-line options).
    progress : bool
        Show a tqdm progress bar.
    deadline : float, optional
        ``time.monotonic()`` value after which training stops at the next validation (as an
        early stop: the best weights are kept); for time-bounded runs.

    Returns
    -------
    dict
        ``steps`` done, ``stopped_early``, ``best_metrics`` and the output ``paths``.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    architecture = getattr(model, "architecture", None)
    if not architecture or architecture["name"] != config.model:
        raise ValueError(
            f"model architecture {architecture and architecture['name']!r} does not match "
            f"config.model={config.model!r}; build the model with get_model(config.model, ...)"
        )
    if not val_data:
        raise ValueError("val_data is empty: give at least one held-out batch")
    device = resolve_device(config.device)
    last_path, best_path = out / "last.pt", out / "best.pt"
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"cannot resume: no {last_path}; start without --resume")
    elif last_path.exists() or (out / "model.pt").exists():
        raise FileExistsError(
            f"{out} already holds a training run; resume it (resume=True / --resume) or choose "
            "another output folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = load_checkpoint(last_path, map_location=device) if resume else None

    pretrained = bool(getattr(model, "encoder_pretrained", False))
    if checkpoint is not None:  # the run's own record decides (weights come from last.pt)
        pretrained = bool(checkpoint["training"].get("encoder_pretrained", False))
    freeze_steps = config.freeze_encoder_steps if pretrained else 0
    if config.freeze_encoder_steps and not pretrained:
        logger.info("freeze_encoder_steps ignored: the encoder has no pretrained weights")
    encoder = getattr(model, "encoder", None)
    encoder_ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    encoder_factor = config.encoder_lr_factor if pretrained else 1.0
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in encoder_ids], "lr_factor": 1.0},
        {"params": [p for p in model.parameters() if id(p) in encoder_ids],
         "lr_factor": encoder_factor},
    ]
    groups = [g for g in groups if g["params"]]
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = get_loss(config.loss, config.loss_weights, config.loss_options).to(device)

    training_record = {**asdict(config), "effective_freeze_encoder_steps": freeze_steps,
                       "encoder_pretrained": pretrained}
    recipe = dict(data_recipe or {})
    history: dict[str, list] = {"train": [], "val": []}
    state = {"step": 0, "best": None, "best_metrics": {}, "bad_validations": 0}
    if checkpoint is not None:
        if checkpoint["architecture"] != architecture:
            raise ValueError(
                f"cannot resume: {last_path} holds {checkpoint['architecture']}, the model given "
                f"is {architecture}"
            )
        changed = _config_matches(checkpoint["training"], config)
        if changed:
            raise ValueError(f"cannot resume with a changed training configuration: {changed}")
        model.load_state_dict(checkpoint["state_dict"])
        saved = checkpoint["train_state"]
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"])
        history = saved["history"]
        state = {k: saved[k] for k in state}
        logger.info("resuming %s at step %d", out, state["step"])
    else:
        torch.manual_seed(config.seed)
    # Rewritten on resume: the steps (or patience) may have been extended.
    _write_json(out / "config.json", {"training": training_record, "data": recipe,
                                      "architecture": architecture, **(record or {})})

    def save_last() -> None:
        train_state = {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                       "history": history, **state}
        save_checkpoint(last_path, model, training=training_record, data=recipe,
                        metrics=history["val"][-1] if history["val"] else {},
                        inference={"threshold": config.threshold}, train_state=train_state)

    if callable(train_data):
        batches = (train_data(step) for step in range(state["step"], config.steps))
    else:
        batches = islice(iter(train_data), state["step"], None)

    stopped_early = False
    frozen = None
    model.train()
    bar = tqdm(total=config.steps, initial=state["step"], disable=not progress, desc="train",
               dynamic_ncols=True)
    smoothed = None
    try:
        for step in range(state["step"], config.steps):
            if frozen != (step < freeze_steps):
                frozen = step < freeze_steps
                _set_encoder_frozen(model, frozen)
            lr = learning_rate(step, config, freeze_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_factor"]
            try:
                inputs, targets = next(batches)
            except StopIteration:
                raise ValueError(
                    f"train_data ran out after {step} batches (steps={config.steps})"
                ) from None
            x = _as_tensor(inputs, device, config.channels_last)
            y = _as_tensor(targets, device)
            loss, _ = loss_fn(model(x), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {float(loss)} at step {step}: lower the learning rate "
                    f"(lr={config.lr})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            value = float(loss.detach())
            history["train"].append([step, value, lr])
            smoothed = value if smoothed is None else 0.98 * smoothed + 0.02 * value
            state["step"] = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{smoothed:.4g}", lr=f"{lr:.2e}", refresh=False)

            if state["step"] % config.val_every and state["step"] != config.steps:
                continue
            metrics = validate(model, loss_fn, val_data, device, config.threshold,
                               config.channels_last)
            if extra_metrics is not None:
                metrics.update(extra_metrics(model))
            model.train()
            metrics["step"] = state["step"]
            history["val"].append(metrics)
            if config.monitor not in metrics:
                raise ValueError(f"monitor={config.monitor!r} is not among {sorted(metrics)}")
            score = metrics[config.monitor]
            sign = 1.0 if _lower_is_better(config.monitor) else -1.0
            if state["best"] is None or sign * (state["best"] - score) > config.min_delta:
                state.update(best=score, best_metrics=metrics, bad_validations=0)
                save_checkpoint(best_path, model, training=training_record, data=recipe,
                                metrics=metrics, inference={"threshold": config.threshold})
            else:
                state["bad_validations"] += 1
            summary = (f"step {state['step']}: val_loss {metrics['val_loss']:.4g}, "
                       f"f1 {metrics['f1']:.3f}, iou {metrics['iou']:.3f}")
            if progress:
                bar.write(summary)
            else:
                logger.info(summary)
            save_last()
            _write_json(out / "history.json", history)
            _plot_curves(out / "loss_curves.png", history)
            if deadline is not None and time.monotonic() >= deadline:
                logger.info("time budget reached at step %d", state["step"])
                stopped_early = True
                break
            if config.patience is not None and state["bad_validations"] >= config.patience:
                logger.info("early stop at step %d: no %s improvement in %d validations",
                            state["step"], config.monitor, config.patience)
                stopped_early = True
                break
    finally:
        bar.close()
        if callable(getattr(train_data, "close", None)):
            train_data.close()  # e.g. stop a prefetching thread

    best = load_checkpoint(best_path, map_location="cpu")
    final = _clone_with_weights(model, best["state_dict"])
    # the range of the inputs it was trained on, for DomainCheck at inference
    domain = domain_ranges((np.asarray(x).reshape(np.shape(x)[-2:]) for inputs, _ in val_data
                            for x in inputs), normalized=True)
    save_checkpoint(out / "model.pt", final, training={**training_record,
                    "steps_done": state["step"], "stopped_early": stopped_early},
                    data=recipe, metrics={**best["metrics"], "input_domain": domain},
                    inference={"threshold": config.threshold})
    return {
        "steps": state["step"],
        "stopped_early": stopped_early,
        "best_metrics": best["metrics"],
        "paths": {name: out / name for name in
                  ("model.pt", "best.pt", "last.pt", "history.json", "loss_curves.png")},
    }


def _clone_with_weights(model: nn.Module, state_dict: dict) -> nn.Module:
    clone = copy.deepcopy(model).cpu()
    clone.load_state_dict(state_dict)
    return clone
