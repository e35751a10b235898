"""``labdct-live train``: train a denoising U-Net on synthetic pairs; resumable.

Example (a multi-hour background run, then its continuation after an interruption)::

    nohup labdct-live train --model compact_s4 --data on-the-fly --cache cache/ \\
        --steps 6000 --out runs/s4 > runs/s4.log 2>&1 &
    labdct-live train --out runs/s4 --resume          # same settings, read from the run
    labdct-live train --out runs/s4 --resume --steps 9000   # extend it
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from labdct_live.cli import CLIError

ORDER = 40

log = logging.getLogger(__name__)

#: Options and their defaults; None in the parsed arguments means "not given", so that a
#: resumed run takes the value it was started with.
DEFAULTS = {
    "model": "compact_s4", "model_config": "{}", "data": None, "cache": None, "steps": 6000,
    "batch_size": 4, "crop": 256, "val_batches": 16, "val_every": 250,
    "validation_fraction": 0.15, "loss": "mse+dice", "loss_weights": "{}", "lr": 1e-3,
    "weight_decay": 1e-2, "schedule": "onecycle", "freeze_steps": 0, "encoder_weights": None,
    "patience": 10, "threshold": 0.5, "seed": 0, "device": "auto", "snr": None, "target": "log",
    "broad_cache": None, "broad_share": 0.5, "init_weights": None,
}


#: ``--data`` values that synthesise pairs from projection caches.
ON_THE_FLY = ("on-the-fly", "broad")

#: Options that a resumed run may change.
_FREE_ON_RESUME = {"steps", "patience", "device"}


def _json_option(text: str, name: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CLIError(f"--{name.replace('_', '-')}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise CLIError(f"--{name.replace('_', '-')}: expected a JSON object, got {text!r}")
    return value


def _settings(args: argparse.Namespace) -> dict:
    """Resolved options: given ones, else those of the run being resumed, else defaults."""
    saved = {}
    config_file = Path(args.out) / "config.json"
    if args.resume:
        if not config_file.is_file():
            raise CLIError(f"--resume: {config_file} not found; is {args.out} a training run?")
        saved = json.loads(config_file.read_text()).get("cli", {})
    settings = {}
    for key, default in DEFAULTS.items():
        value = getattr(args, key)
        if value is not None and key in saved and key not in _FREE_ON_RESUME:
            if json.loads(json.dumps(value)) != saved[key]:  # compare as stored (tuples: lists)
                raise CLIError(f"--{key.replace('_', '-')} {value} differs from the run's "
                               f"{saved[key]}: a resumed run keeps its settings")
        settings[key] = value if value is not None else saved.get(key, default)
    if settings["data"] is None:
        raise CLIError("--data is required: 'on-the-fly' (with --cache DIR), 'broad' (with "
                       "--cache DIR --broad-cache DIR) or a pair-dataset file "
                       "(labdct_live.training.torchdata.write_pair_dataset)")
    return settings


def run(args: argparse.Namespace) -> int:
    from labdct_live.io.output import work_folder

    s = _settings(args)
    # The run folder is resumable, so written in place; checked before the data is read.
    with work_folder(args.out, [None if s["data"] in ON_THE_FLY else s["data"], s["cache"],
                                s["broad_cache"], s["encoder_weights"],
                                None if s["init_weights"] == "shipped" else s["init_weights"]]):
        return _train(args, s)


def _train(args: argparse.Namespace, s: dict) -> int:
    import torch

    from labdct_live.models import get_model, load_resnet34_weights
    from labdct_live.models.data import (
        broad_batches,
        fixed_dataset_batches,
        on_the_fly_batches,
    )
    from labdct_live.models.train import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(
        model=s["model"], model_config=_json_option(s["model_config"], "model_config"),
        loss=s["loss"], loss_weights=_json_option(s["loss_weights"], "loss_weights"),
        steps=s["steps"], lr=s["lr"], weight_decay=s["weight_decay"], schedule=s["schedule"],
        freeze_encoder_steps=s["freeze_steps"], val_every=s["val_every"],
        patience=None if s["patience"] <= 0 else s["patience"], threshold=s["threshold"],
        seed=s["seed"], device=s["device"],
    )
    if s["data"] in ON_THE_FLY:
        if not s["cache"]:
            raise CLIError(f"--data {s['data']} needs --cache DIR, a projection cache "
                           "(labdct_live.training.cache.build_projection_cache)")
        from labdct_live.training.synthesis import SynthesisConfig

        synthesis = SynthesisConfig(target=s["target"], **(
            {"median_snr_range": tuple(s["snr"])} if s["snr"] else {}))
        common = dict(batch_size=s["batch_size"], crop_size=s["crop"],
                      val_batches=s["val_batches"], validation_fraction=s["validation_fraction"],
                      chunk_steps=s["val_every"], seed=s["seed"], synthesis=synthesis)
        if s["data"] == "broad":
            if not s["broad_cache"]:
                raise CLIError("--data broad needs --broad-cache DIR, a projection cache of "
                               "labdct_live.training.broad.broad_acquisitions")
            train_data, val_data, recipe = broad_batches(
                s["cache"], s["broad_cache"], broad_share=s["broad_share"], **common)
        else:
            train_data, val_data, recipe = on_the_fly_batches(s["cache"], **common)
    else:
        from labdct_live.io.output import require_hdf5

        path = Path(s["data"])
        if not path.is_file():
            raise CLIError(f"--data {path}: no such file (give 'on-the-fly' or a pair-dataset "
                           "file)")
        require_hdf5(path, "--data pair-dataset file")
        train_data, val_data, recipe = fixed_dataset_batches(
            path, batch_size=s["batch_size"], val_batches=s["val_batches"], seed=s["seed"])
        if recipe["attributes"].get("input_format") == "uint8":
            log.warning("%s holds 8-bit inputs (the paper's format): a model trained on them "
                        "expects 8-bit counts, not the normalised frames denoise() feeds it",
                        path)

    torch.manual_seed(s["seed"])  # the initial weights
    model = get_model(config.model, **config.model_config)
    if s["encoder_weights"]:
        if config.model != "resnet34_unet":
            raise CLIError(f"--encoder-weights applies to resnet34_unet, not {config.model}")
        load_resnet34_weights(model, s["encoder_weights"])
    if s["init_weights"]:
        model, config = _initial_weights(s["init_weights"], config)

    out = Path(args.out)
    # The resolved options go into config.json, so that `--resume` needs no others.
    result = train(model, train_data, val_data, config, out, resume=args.resume,
                   data_recipe=recipe, record={"cli": s}, progress=not args.no_progress)
    best = result["best_metrics"]
    print(f"trained {config.model} for {result['steps']} steps"
          f"{' (stopped early)' if result['stopped_early'] else ''}: best val_loss "
          f"{best['val_loss']:.4g}, pixel F1 {best['f1']:.3f}, IoU {best['iou']:.3f}; "
          f"model written to {out / 'model.pt'}")
    return 0


def _initial_weights(source: str, config):
    """The network to fine-tune (the shipped model, ``shipped``, or a checkpoint file) and
    ``config`` with its architecture options (when ``--model-config`` left them unset)."""
    from dataclasses import replace

    from labdct_live.models import load_model, load_pretrained

    if source == "shipped":
        model = load_pretrained()
    else:
        if not Path(source).is_file():
            raise CLIError(f"--init-weights {source}: no such file (a checkpoint or 'shipped')")
        model = load_model(source)
    arch = model.architecture
    if arch["name"] != config.model or config.model_config not in ({}, dict(arch["config"])):
        raise CLIError(f"--init-weights {source} is a {arch['name']} {arch['config']}, not the "
                       f"--model {config.model} {config.model_config} being trained")
    return model.train(), replace(config, model_config=dict(arch["config"]))


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a denoising U-Net on synthetic pairs (resumable)",
        description="Train a network of the registry on (noisy input, target mask) pairs made "
                    "on the fly from a projection cache, or read from a fixed pair dataset. "
                    "Writes config.json, last.pt (resume point, at every validation), best.pt, "
                    "history.json, loss_curves.png and, when done, model.pt into --out. With "
                    "--resume, options not given are those the run was started with.")
    p.add_argument("--model", help="architecture: a name of labdct_live.models.list_models() "
                                   f"(default {DEFAULTS['model']}; see docs/models.md)")
    p.add_argument("--model-config", metavar="JSON",
                   help='architecture options, e.g. \'{"widths": [16, 32, 64]}\'')
    p.add_argument("--data", metavar="on-the-fly|broad|PATH",
                   help="'on-the-fly' (needs --cache), 'broad' (also --broad-cache: mixes in "
                        "random instruments, docs/models.md) or a pair-dataset .h5 file")
    p.add_argument("--cache", metavar="DIR", help="projection cache for --data on-the-fly")
    p.add_argument("--broad-cache", metavar="DIR",
                   help="projection cache of random instruments for --data broad")
    p.add_argument("--broad-share", type=float,
                   help="share of each batch from --broad-cache (default 0.5)")
    p.add_argument("--init-weights", metavar="shipped|PATH",
                   help="start from these weights (fine-tuning): 'shipped' or a checkpoint")
    p.add_argument("--steps", type=int, help=f"optimizer steps (default {DEFAULTS['steps']})")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--batch-size", type=int,
                   help=f"pairs per step (default {DEFAULTS['batch_size']})")
    p.add_argument("--crop", type=int,
                   help=f"crop side, px (on the fly; default {DEFAULTS['crop']})")
    p.add_argument("--val-batches", type=int,
                   help=f"validation batches (default {DEFAULTS['val_batches']})")
    p.add_argument("--val-every", type=int,
                   help=f"validate and checkpoint every N steps (default {DEFAULTS['val_every']})")
    p.add_argument("--validation-fraction", type=float,
                   help="share of cached projections held out (default 0.15)")
    p.add_argument("--snr", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="range of the per-frame median spot SNR (on the fly; default 0.7 6)")
    p.add_argument("--target", choices=("log", "labels"),
                   help="target masks (on the fly): LoG of the clean image (the paper's, "
                        "default) or the simulator's spot masks")
    p.add_argument("--loss", help="loss terms joined by '+' (mse, l1, bce, dice, focal, "
                                  f"perceptual) or 'paper' (default {DEFAULTS['loss']})")
    p.add_argument("--loss-weights", metavar="JSON", help='term weights, e.g. \'{"dice": 0.5}\'')
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {DEFAULTS['lr']})")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.01)")
    p.add_argument("--schedule", choices=("onecycle", "cosine"), help="default onecycle")
    p.add_argument("--freeze-steps", type=int,
                   help="steps with a frozen pretrained encoder (with --encoder-weights)")
    p.add_argument("--encoder-weights", metavar="PATH",
                   help="local torchvision resnet34 ImageNet weights for resnet34_unet")
    p.add_argument("--patience", type=int,
                   help="early stop after N validations without improvement; 0: never "
                        f"(default {DEFAULTS['patience']})")
    p.add_argument("--threshold", type=float, help="output threshold for F1/IoU (default 0.5)")
    p.add_argument("--seed", type=int, help="seed of weights and data (default 0)")
    p.add_argument("--device", help="auto (CUDA when present), cpu or cuda (default auto)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
