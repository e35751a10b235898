"""Training data of random instruments (labdct_live.training.broad) and ``train --data broad``."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from labdct_live.models.data import broad_batches
from labdct_live.training.broad import (
    BroadRanges,
    broad_acquisitions,
    broad_crops,
    random_geometry,
    random_noise_model,
    random_scene,
)
from labdct_live.training.cache import DatasetError, build_projection_cache
from labdct_live.training.crops import CropSettings, generate_crops
from labdct_live.training.torchdata import split_projections

#: Small detectors and samples so that a cache takes seconds.
SMALL = BroadRanges(detector_px=(96, 128), n_grains=(20, 40), diameter_mm=(0.15, 0.25))
CLI = [sys.executable, "-c", "import sys; from labdct_live.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("broad") / "cache"
    return build_projection_cache(folder, broad_acquisitions(4, seed=5, ranges=SMALL), 3,
                                  seed=5, progress=False)


def test_random_geometries_cover_the_ranges_users_have():
    ranges = BroadRanges()
    geometries = [random_geometry(np.random.default_rng(s)) for s in range(200)]
    lss = np.array([g.lss for g in geometries])
    lsd = np.array([g.lsd for g in geometries])
    pixel = np.array([g.pixel_size for g in geometries]) * 1e3
    sides = np.array([g.detector_shape[0] for g in geometries])
    assert ranges.lss_mm[0] <= lss.min() and lss.max() <= ranges.lss_mm[1]
    assert ranges.lsd_mm[0] <= lsd.min() and lsd.max() <= ranges.lsd_mm[1]
    # Laue focusing (Lss ~ Lsd, short) and far field (long Lsd) both occur
    assert (lsd < 20).sum() > 5 and (lsd > 150).sum() > 20 and (lss > 80).sum() > 20
    # stored pixels: pitch 3-75 µm times binning 1-4
    assert pixel.min() >= 3.0 - 1e-9 and pixel.max() <= 300.0 + 1e-9
    assert pixel.min() < 10 and pixel.max() > 60
    assert np.all(sides % 16 == 0) and sides.min() >= 384 and sides.max() <= 768
    with_stop = [g for g in geometries if g.has_beamstop]
    assert 0.55 < len(with_stop) / len(geometries) < 0.85
    for g in with_stop:
        r0, r1, c0, c1 = g.beamstop
        assert 0 <= r0 < r1 < g.detector_shape[0] and 0 <= c0 < c1 < g.detector_shape[1]


def test_acquisitions_are_reproducible_and_their_samples_in_range():
    a, b = broad_acquisitions(5, seed=2), broad_acquisitions(5, seed=2)
    assert [x.to_dict() for x in a] == [x.to_dict() for x in b]
    assert [x.to_dict() for x in a] != [x.to_dict() for x in broad_acquisitions(5, seed=3)]
    for acq in a:
        assert 0.15 <= acq.spec.diameter <= 0.6
        assert 30 <= acq.spec.n_grains <= 400
        assert acq.spec.material in ("Al", "Fe")


def test_random_detectors_and_scenes_vary_level_structure_and_noise():
    rng = np.random.default_rng(0)
    models = [random_noise_model(rng) for _ in range(300)]
    gains = np.array([m.gain for m in models])
    assert 0.3 <= gains.min() and gains.max() <= 4.0
    assert np.mean([m.correlation > 0 for m in models]) == pytest.approx(0.5, abs=0.1)
    assert all(1.0 <= m.read_noise <= 25.0 for m in models)
    geometry = random_geometry(np.random.default_rng(4), SMALL)
    levels, spreads = [], []
    for _ in range(40):
        background, noise, meta = random_scene((96, 96), geometry, rng)
        assert background.shape == (96, 96) and background.dtype == np.float32
        assert background.min() >= noise.offset - 1e-3  # the dark offset is the floor
        levels.append(float(np.median(background)) - noise.offset)
        spreads.append(float(np.percentile(background, 99) - np.percentile(background, 1)))
    assert min(levels) < 5 and max(levels) > 300  # dark frames to bright ones
    assert max(spreads) > 100  # structured, not flat


def test_broad_crops_are_reproducible_binary_and_use_each_projections_beam_stop(small_cache):
    crops = CropSettings(size=64, crops_per_frame=2)
    stream = broad_crops(small_cache, np.random.default_rng(1), ranges=SMALL, crops=crops)
    first = [next(stream) for _ in range(12)]
    again = broad_crops(small_cache, np.random.default_rng(1), ranges=SMALL, crops=crops)
    for x, t, meta in first:
        x2, t2, meta2 = next(again)
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(t, t2)
        assert x.shape == t.shape == (64, 64) and x.dtype == np.float32
        assert set(np.unique(t)) <= {0, 1}
        assert SMALL.median_snr[0] <= meta["median_snr"] <= SMALL.median_snr[1]
        assert {"level", "gain", "read_noise", "correlation"} <= set(meta)
    assert any(t.any() for _, t, _ in first)
    # a whole frame of a projection with a beam stop: no target inside the shadow
    stops = [i for i in range(len(small_cache)) if small_cache[i].geometry.has_beamstop]
    assert stops, "the test cache should hold a projection with a beam stop"
    whole = broad_crops(small_cache, np.random.default_rng(2), ranges=SMALL,
                        crops=CropSettings(size=None, augment=False), projections=stops)
    for _ in range(3):
        _, target, meta = next(whole)
        shadow = small_cache[meta["projection"]].geometry.beamstop_mask()
        assert not target[shadow].any()


def test_broad_batches_mix_the_paper_crops_and_the_random_instruments(small_cache):
    train, validation, recipe = broad_batches(small_cache.directory, small_cache.directory,
                                              broad_share=0.25, batch_size=4, crop_size=64,
                                              val_batches=2, validation_fraction=0.25,
                                              chunk_steps=5, prefetch=0, seed=3)
    assert recipe["kind"] == "broad" and recipe["broad_share"] == 0.25
    assert len(validation) == 2 and validation[0][0].shape == (4, 64, 64)
    x, y = train(0)
    # the first three crops are the paper's Eq. 1-2 crops of the same stream, the last one a
    # random instrument's
    train_idx, _ = split_projections(small_cache, 0.25, 3)
    paper = generate_crops(small_cache, np.random.default_rng([3, 5, 0]),
                           crops=CropSettings(size=64), projections=train_idx)
    for k in range(3):
        np.testing.assert_array_equal(x[k], next(paper)[0])
    broad = broad_crops(small_cache, np.random.default_rng([3, 8, 0]),
                        crops=CropSettings(size=64), projections=train_idx)
    np.testing.assert_array_equal(x[3], next(broad)[0])
    np.testing.assert_array_equal(train(0)[0], x)  # a step's batch does not depend on order
    with pytest.raises(ValueError, match="broad_share"):
        broad_batches(small_cache.directory, small_cache.directory, broad_share=1.5)


def test_ranges_are_checked():
    with pytest.raises(DatasetError, match="lsd_mm"):
        BroadRanges(lsd_mm=(0.0, 10.0))
    with pytest.raises(DatasetError, match="binning"):
        replace(SMALL, binning=(3, 2))


def test_train_broad_fine_tunes_the_shipped_model(small_cache, tmp_path):
    out = tmp_path / "run"
    cache = str(small_cache.directory)
    common = ["train", "--data", "broad", "--cache", cache, "--broad-cache", cache,
              "--batch-size", "2", "--crop", "64", "--val-batches", "1",
              "--validation-fraction", "0.25", "--no-progress"]
    done = subprocess.run([*CLI, *common, "--steps", "2", "--val-every", "2", "--lr", "1e-9",
                           "--init-weights", "shipped", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    checkpoint = torch.load(out / "model.pt", weights_only=True)
    assert checkpoint["data"]["kind"] == "broad"
    from labdct_live.models import pretrained_path

    shipped = torch.load(pretrained_path(), weights_only=True)["state_dict"]
    # at lr 1e-9 two steps leave the shipped weights (not random ones) in place; batch-norm
    # running statistics move with every batch, and the shipped file stores float16
    compared = 0
    for name, value in shipped.items():
        if value.dtype.is_floating_point and "running" not in name:
            torch.testing.assert_close(checkpoint["state_dict"][name].float(), value.float(),
                                       atol=2e-3, rtol=2e-3)
            compared += 1
    assert compared > 10
    assert json.loads((out / "config.json").read_text())["cli"]["init_weights"] == "shipped"

    missing = subprocess.run([*CLI, *common, "--steps", "2", "--init-weights", "nosuch.pt",
                              "--out", str(tmp_path / "run2")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "--init-weights nosuch.pt: no such file" in missing.stderr
    other = subprocess.run([*CLI, *common, "--steps", "2", "--model", "compact_s2",
                            "--init-weights", "shipped", "--out", str(tmp_path / "run3")],
                           capture_output=True, text=True, timeout=120)
    assert other.returncode == 2 and "not the --model compact_s2" in other.stderr
    no_broad = subprocess.run([*CLI, "train", "--data", "broad", "--cache", cache, "--out",
                               str(tmp_path / "run4")], capture_output=True, text=True,
                              timeout=120)
    assert no_broad.returncode == 2 and "--broad-cache" in no_broad.stderr
