"""Training loop: schedule, learning, determinism, exact resume, early stopping, CLI."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch

from labdct_live.cli import main
from labdct_live.models import get_model, load_checkpoint, load_model
from labdct_live.models.data import ChunkedBatches, fixed_dataset_batches
from labdct_live.models.losses import get_loss
from labdct_live.models.train import TrainConfig, learning_rate, train, validate
from labdct_live.training.synthesis import normalize_frame

SIZE = 48


def spot_pair(rng: np.random.Generator, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian spots on a flat background with Poisson noise; target = spot cores."""
    rows, cols = np.mgrid[:size, :size]
    clean = np.zeros((size, size))
    for _ in range(rng.integers(3, 7)):
        r, c = rng.uniform(4, size - 4, 2)
        sd, amplitude = rng.uniform(1.0, 2.0), rng.uniform(60, 300)
        clean += amplitude * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * sd * sd))
    noisy = rng.poisson(clean + 100.0)
    return normalize_frame(noisy), (clean > 20).astype(np.float32)


def spot_batch(step: int, seed: int = 0, batch_size: int = 4):
    rng = np.random.default_rng([seed, step])
    pairs = [spot_pair(rng) for _ in range(batch_size)]
    return np.stack([x for x, _ in pairs]), np.stack([y for _, y in pairs])


VALIDATION = [spot_batch(10_000 + i) for i in range(2)]


def _config(**changes) -> TrainConfig:
    settings = dict(model="compact_tiny", model_config={"widths": [8, 16]}, steps=8,
                    val_every=4, lr=3e-3, patience=None, device="cpu")
    settings.update(changes)
    return TrainConfig(**settings)


def _model(config: TrainConfig, seed: int = 0):
    torch.manual_seed(seed)
    return get_model(config.model, **config.model_config)


def test_learning_rate_schedules_closed_form():
    config = TrainConfig(steps=100, lr=1e-2, warmup_fraction=0.25)
    assert learning_rate(0, config) == pytest.approx(1e-2 / 25)
    assert learning_rate(25, config) == pytest.approx(1e-2)
    assert learning_rate(100, config) == pytest.approx(1e-2 / 25 / 1e4)
    assert learning_rate(12.5, config) == pytest.approx((1e-2 + 1e-2 / 25) / 2)
    cosine = TrainConfig(steps=100, lr=1e-2, schedule="cosine")
    assert learning_rate(0, cosine) == pytest.approx(1e-2)
    assert learning_rate(50, cosine) == pytest.approx(5e-3)
    # A frozen phase of 40 steps: a second cycle starts at step 40.
    assert learning_rate(40, config, freeze_steps=40) == pytest.approx(1e-2 / 25)
    assert learning_rate(40 + 15, config, freeze_steps=40) == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="step")


def test_a_few_steps_reduce_the_loss_on_spot_images(tmp_path):
    config = _config(model_config={}, steps=80, val_every=40, lr=5e-3)
    model = _model(config)
    loss_fn = get_loss(config.loss)
    before = validate(model, loss_fn, VALIDATION)
    result = train(model, spot_batch, VALIDATION, config, tmp_path / "run", progress=False)
    after = result["best_metrics"]
    assert after["val_loss"] < 0.7 * before["val_loss"]
    assert after["f1"] > before["f1"] + 0.3 and after["f1"] > 0.6
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history["train"]) == 80 and [v["step"] for v in history["val"]] == [40, 80]
    assert (tmp_path / "run" / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    final = load_model(tmp_path / "run" / "model.pt")
    assert final.metadata["metrics"]["f1"] == pytest.approx(after["f1"])
    assert final.metadata["training"]["steps_done"] == 80
    # the range of its inputs, measured on the validation batches, for DomainCheck
    from labdct_live.models.domain import DOMAIN_STATISTICS, DomainCheck

    domain = final.metadata["metrics"]["input_domain"]
    assert domain["frames"] == sum(len(x) for x, _ in VALIDATION)
    assert all(domain[name][0] <= domain[name][1] for name in DOMAIN_STATISTICS)
    check = DomainCheck.from_metadata(final.metadata)
    assert all(check(np.asarray(x), normalized=True) == {} for xs, _ in VALIDATION for x in xs)
    assert check(10 * np.asarray(VALIDATION[0][0][0]), normalized=True)  # a frame unlike them
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["training"]["loss"] == "mse+dice"


def _last_weights(run) -> dict:
    return load_checkpoint(run / "last.pt")["state_dict"]


def test_same_seed_same_weights_and_resume_continues_exactly(tmp_path):
    config = _config()
    train(_model(config), spot_batch, VALIDATION, config, tmp_path / "a", progress=False)
    train(_model(config), spot_batch, VALIDATION, config, tmp_path / "b", progress=False)
    a, b = _last_weights(tmp_path / "a"), _last_weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)

    def interrupted(step):
        if step == 6:
            raise KeyboardInterrupt
        return spot_batch(step)

    with pytest.raises(KeyboardInterrupt):
        train(_model(config), interrupted, VALIDATION, config, tmp_path / "c", progress=False)
    assert load_checkpoint(tmp_path / "c" / "last.pt")["train_state"]["step"] == 4
    # Resume: a model with other initial weights, as a fresh process would build.
    train(_model(config, seed=99), spot_batch, VALIDATION, config, tmp_path / "c", resume=True,
          progress=False)
    c = _last_weights(tmp_path / "c")
    assert all(torch.equal(a[k], c[k]) for k in a)
    history_a = json.loads((tmp_path / "a" / "history.json").read_text())
    history_c = json.loads((tmp_path / "c" / "history.json").read_text())
    assert history_a == history_c

    different = _config(seed=1)
    train(_model(different, seed=1), spot_batch, VALIDATION, different, tmp_path / "d",
          progress=False)
    d = _last_weights(tmp_path / "d")
    assert not all(torch.equal(a[k], d[k]) for k in a)


def test_run_folder_rules(tmp_path):
    config = _config(steps=4)
    train(_model(config), spot_batch, VALIDATION, config, tmp_path / "run", progress=False)
    with pytest.raises(FileExistsError, match="resume"):
        train(_model(config), spot_batch, VALIDATION, config, tmp_path / "run", progress=False)
    with pytest.raises(FileNotFoundError, match="resume"):
        train(_model(config), spot_batch, VALIDATION, config, tmp_path / "new", resume=True,
              progress=False)
    with pytest.raises(ValueError, match="changed training configuration.*lr"):
        train(_model(config), spot_batch, VALIDATION, _config(steps=4, lr=1.0), tmp_path / "run",
              resume=True, progress=False)
    with pytest.raises(ValueError, match="does not match"):
        train(get_model("compact_s2"), spot_batch, VALIDATION, config, tmp_path / "x",
              progress=False)
    with pytest.raises(ValueError, match="ran out"):
        train(_model(config), [spot_batch(0)], VALIDATION, config, tmp_path / "short",
              progress=False)


def test_early_stopping_after_patience_validations_without_improvement(tmp_path):
    config = _config(steps=40, val_every=2, lr=0.0, patience=2, weight_decay=0.0)
    result = train(_model(config), spot_batch, VALIDATION, config, tmp_path / "run",
                   progress=False)
    # lr 0: the first validation sets the best; the next two do not improve on it.
    assert result["stopped_early"] and result["steps"] == 6


def test_frozen_pretrained_encoder_keeps_weights_but_trains_batch_norm(tmp_path):
    config = _config(steps=3, val_every=3, freeze_encoder_steps=3)
    model = _model(config)
    model.encoder_pretrained = True  # as load_resnet34_weights marks a loaded encoder
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, spot_batch, VALIDATION, config, tmp_path / "run", progress=False)
    after = _last_weights(tmp_path / "run")
    assert torch.equal(after["encoder.0.0.0.weight"], before["encoder.0.0.0.weight"])
    assert torch.equal(after["encoder.1.0.0.weight"], before["encoder.1.0.0.weight"])
    assert not torch.equal(after["encoder.0.0.1.weight"], before["encoder.0.0.1.weight"])
    assert not torch.equal(after["head.weight"], before["head.weight"])
    record = load_checkpoint(tmp_path / "run" / "last.pt")["training"]
    assert record["effective_freeze_encoder_steps"] == 3 and record["encoder_pretrained"]


def test_chunked_batches_depend_only_on_the_step():
    def make_stream(chunk):
        value = chunk * 100
        while True:
            yield value
            value += 1

    sequential = ChunkedBatches(make_stream, chunk_steps=5)
    values = [sequential(step) for step in range(12)]
    assert values == [0, 1, 2, 3, 4, 100, 101, 102, 103, 104, 200, 201]
    jumping = ChunkedBatches(make_stream, chunk_steps=5)
    assert [jumping(s) for s in (7, 8, 2, 11, 5)] == [102, 103, 2, 201, 100]
    prefetching = ChunkedBatches(make_stream, chunk_steps=5, prefetch=2)
    assert [prefetching(step) for step in range(12)] == values
    assert [prefetching(s) for s in (7, 8, 2, 11, 5)] == [102, 103, 2, 201, 100]
    prefetching.close()

    def failing(chunk):
        yield 1
        raise RuntimeError("synthesis failed")

    broken = ChunkedBatches(failing, chunk_steps=5, prefetch=2)
    assert broken(0) == 1
    with pytest.raises(RuntimeError, match="synthesis failed"):
        broken(1)
    broken.close()


def _write_pairs(path, n_train: int, n_val: int, seed: int = 0) -> None:
    """A pair-dataset file in the layout of labdct_live.training.torchdata.write_pair_dataset."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as h5:
        h5.attrs.update(format="labdct-live training pairs", version="test", input_format="float",
                        crop_size=SIZE, config="{}", complete=True)
        for split, n in (("train", n_train), ("validation", n_val)):
            pairs = [spot_pair(rng) for _ in range(n)]
            group = h5.create_group(split)
            group.create_dataset("input", data=np.stack([x for x, _ in pairs]).astype(np.float32))
            group.create_dataset("target", data=np.stack([y for _, y in pairs]).astype(np.uint8))


def test_fixed_dataset_batches_visit_every_pair_once_per_epoch(tmp_path):
    _write_pairs(tmp_path / "pairs.h5", n_train=10, n_val=3)
    batch, validation, recipe = fixed_dataset_batches(tmp_path / "pairs.h5", batch_size=2)
    assert recipe["n_train"] == 10 and [len(x) for x, _ in validation] == [2, 1]
    with h5py.File(tmp_path / "pairs.h5") as h5:
        all_inputs = h5["train/input"][()]
    seen = np.concatenate([batch(step)[0] for step in range(5)])  # one epoch
    order = [int(np.flatnonzero((all_inputs == x).all(axis=(1, 2)))[0]) for x in seen]
    assert sorted(order) == list(range(10))
    np.testing.assert_array_equal(batch(3)[0], batch(3)[0])
    assert not np.array_equal(batch(5)[0], batch(0)[0])  # epoch 2 is reshuffled


def test_cli_train_runs_and_resumes_with_the_saved_options(tmp_path):
    _write_pairs(tmp_path / "pairs.h5", n_train=12, n_val=4)
    out = tmp_path / "run"
    common = ["--no-progress"]
    assert main(["train", "--model", "compact_tiny", "--model-config", '{"widths": [8, 16]}',
                 "--data", str(tmp_path / "pairs.h5"), "--steps", "4", "--val-every", "2",
                 "--batch-size", "2", "--device", "cpu", "--out", str(out), *common]) == 0
    assert load_model(out / "model.pt").architecture["config"]["widths"] == [8, 16]
    assert main(["train", "--out", str(out), "--resume", "--steps", "6", *common]) == 0
    last = load_checkpoint(out / "last.pt")
    assert last["train_state"]["step"] == 6
    assert last["training"]["model"] == "compact_tiny"
    assert json.loads((out / "config.json").read_text())["cli"]["batch_size"] == 2
    assert last["data"]["kind"] == "fixed" and last["data"]["batch_size"] == 2
    assert json.loads((out / "config.json").read_text())["cli"]["steps"] == 6
    assert main(["train", "--out", str(out), "--resume", "--batch-size", "4", *common]) == 2
    # User errors exit with status 2 and a message, not a traceback.
    assert main(["train", "--out", str(tmp_path / "x"), "--resume"]) == 2
    assert main(["train", "--model", "nonet", "--data", str(tmp_path / "pairs.h5"),
                 "--out", str(tmp_path / "y"), *common]) == 2
    assert main(["train", "--data", "on-the-fly", "--out", str(tmp_path / "z"), *common]) == 2
    assert not math.isnan(last["metrics"]["val_loss"])


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A projection cache of four simulated 192² D18 projections (the detector scaled down)."""
    from labdct_live.simulation.presets import preset
    from labdct_live.training.acquisitions import Acquisition
    from labdct_live.training.cache import build_projection_cache

    spec, geometry = preset("D18")
    factor = geometry.detector_shape[0] / 192
    geometry = geometry.with_(detector_shape=(192, 192), pixel_size=geometry.pixel_size * factor,
                              beamstop=tuple(int(round(v / factor)) for v in geometry.beamstop))
    directory = tmp_path_factory.mktemp("cache") / "projections"
    build_projection_cache(directory, [Acquisition("tiny", spec, geometry, 1)], 4,
                           progress=False)
    return directory


def test_on_the_fly_batches_depend_only_on_seed_and_step(tiny_cache):
    from labdct_live.models.data import on_the_fly_batches

    options = dict(batch_size=2, crop_size=64, val_batches=2, validation_fraction=0.25,
                   chunk_steps=3, seed=4)
    first, validation, recipe = on_the_fly_batches(tiny_cache, **options)
    second, validation_again, _ = on_the_fly_batches(tiny_cache, **options)
    assert recipe["kind"] == "on-the-fly" and len(recipe["validation_projections"]) == 1
    assert len(validation) == 2 and validation[0][0].shape == (2, 64, 64)
    np.testing.assert_array_equal(validation[1][0], validation_again[1][0])
    in_order = [first(step) for step in range(7)]
    for step in (5, 1, 6, 3):  # out of order, across chunk boundaries
        x, y = second(step)
        np.testing.assert_array_equal(x, in_order[step][0])
        np.testing.assert_array_equal(y, in_order[step][1])
    assert in_order[0][0].dtype == np.float32 and set(np.unique(in_order[0][1])) <= {0, 1}
    first.close()
    second.close()


def test_on_the_fly_training_resumes_exactly(tiny_cache, tmp_path):
    from labdct_live.models.data import on_the_fly_batches

    config = _config(steps=6, val_every=2)

    def data():
        return on_the_fly_batches(tiny_cache, batch_size=2, crop_size=64, val_batches=1,
                                  validation_fraction=0.25, chunk_steps=2, seed=0)

    batches, validation, recipe = data()
    train(_model(config), batches, validation, config, tmp_path / "a", data_recipe=recipe,
          progress=False)
    batches, validation, recipe = data()

    def interrupted(step):
        if step == 5:
            raise KeyboardInterrupt
        return batches(step)

    with pytest.raises(KeyboardInterrupt):
        train(_model(config), interrupted, validation, config, tmp_path / "b",
              data_recipe=recipe, progress=False)
    batches.close()
    batches, validation, recipe = data()  # a fresh process: new stream, other initial weights
    train(_model(config, seed=9), batches, validation, config, tmp_path / "b", resume=True,
          data_recipe=recipe, progress=False)
    a, b = _last_weights(tmp_path / "a"), _last_weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_train_on_the_fly(tiny_cache, tmp_path):
    assert main(["train", "--model", "compact_tiny", "--data", "on-the-fly", "--cache",
                 str(tiny_cache), "--crop", "64", "--batch-size", "2", "--val-batches", "1",
                 "--validation-fraction", "0.25", "--val-every", "2", "--steps", "2",
                 "--snr", "1", "4", "--device", "cpu", "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 0
    recipe = load_model(tmp_path / "run" / "model.pt").metadata["data"]
    assert recipe["cache"] == str(tiny_cache.resolve()) and recipe["chunk_steps"] == 2
    assert recipe["synthesis"]["median_snr_range"] == [1.0, 4.0]
