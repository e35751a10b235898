"""Tests of labdct_live.training: projection cache, crop stream, fixed HDF5 datasets."""

import json

import h5py
import numpy as np
import pytest
import torch

from labdct_live.simulation.geometry import Geometry
from labdct_live.training.acquisitions import Acquisition
from labdct_live.training.cache import (
    CachedProjection,
    DatasetError,
    ProjectionCache,
    build_projection_cache,
    write_projection_cache,
)
from labdct_live.training.crops import CropSettings, generate_crops
from labdct_live.training.synthesis import SynthesisConfig, normalization_stats, synthesize_input
from labdct_live.training.torchdata import (
    PairDataset,
    SyntheticPairStream,
    split_projections,
    write_pair_dataset,
)

SHAPE = (160, 176)
GEOMETRY = Geometry(detector_shape=SHAPE, pixel_size=0.04, beamstop=(60, 100, 70, 110))


def _projection(k: int, rng) -> CachedProjection:
    rr, cc = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    clean = np.zeros(SHAPE, np.float32)
    labels = np.zeros(SHAPE, np.int32)
    n = 0
    for _ in range(6):
        r, c = rng.integers(8, SHAPE[0] - 8), rng.integers(8, SHAPE[1] - 8)
        if 50 <= r <= 110 and 60 <= c <= 120:
            continue  # keep spots off the beam stop
        n += 1
        blob = rng.uniform(20, 200) * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * 1.5**2))
        clean += blob.astype(np.float32)
        labels[(blob > 0.1 * blob.max()) & (labels == 0)] = n
    meta = {"acquisition": {"name": f"acq{k % 2}", "geometry": GEOMETRY.to_dict()},
            "omega": float(2 * k)}
    return CachedProjection(clean, labels, meta)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    rng = np.random.default_rng(0)
    directory = tmp_path_factory.mktemp("cache")
    return write_projection_cache(directory, [_projection(k, rng) for k in range(6)])


# ------------------------------------------------------------------------- cache
def test_cache_round_trip(cache):
    assert len(cache) == 6
    p = cache[2]
    assert p.clean.dtype == np.float32 and p.labels.dtype == np.int32 and p.clean.shape == SHAPE
    assert p.omega == 4.0 and p.geometry == GEOMETRY
    assert cache.acquisition_of(3) == "acq1"
    assert [a["name"] for a in cache.index["acquisitions"]] == ["acq0", "acq1"]


def test_cache_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.json"):
        ProjectionCache(tmp_path)
    with pytest.raises(DatasetError, match="meta"):
        write_projection_cache(tmp_path / "a", [CachedProjection(np.zeros((4, 4)), np.zeros(
            (4, 4), np.int32), {"omega": 0.0})])
    with pytest.raises(DatasetError, match="no projections"):
        write_projection_cache(tmp_path / "b", [])
    with pytest.raises(DatasetError, match="acquisitions is empty"):
        build_projection_cache(tmp_path / "c", [], 1)


def test_build_projection_cache_with_the_simulator(tmp_path):
    from labdct_live.simulation.presets import preset

    spec, g = preset("D18")
    small = g.with_(detector_shape=(128, 128), pixel_size=g.pixel_size * 16, n_projections=5,
                    omega_step=72.0)
    acq = Acquisition("tiny", spec, small, sample_seed=1)
    with pytest.raises(DatasetError, match="unique"):
        build_projection_cache(tmp_path / "dup", [acq, acq], 1, progress=False)
    cache = build_projection_cache(tmp_path / "sim", [acq], 2, seed=3, progress=False)
    assert len(cache) == 2
    p = cache[0]
    assert p.clean.shape == (128, 128) and p.labels.max() > 0
    assert p.omega in small.omegas and p.meta["acquisition"]["sample_seed"] == 1
    index = json.loads((tmp_path / "sim" / "index.json").read_text())
    assert index["seed"] == 3 and len(index["projections"]) == 2
    with pytest.raises(FileExistsError):
        build_projection_cache(tmp_path / "sim", [acq], 2, progress=False)
    # an interrupted build (no index yet) resumes with the projections already written
    files = sorted((tmp_path / "sim").glob("*.npz"))
    stamps = [f.stat().st_mtime_ns for f in files]
    (tmp_path / "sim" / "index.json").unlink()
    resumed = build_projection_cache(tmp_path / "sim", [acq], 2, seed=3, progress=False)
    assert [f.stat().st_mtime_ns for f in files] == stamps and len(resumed) == 2


# ------------------------------------------------------------------------- crops
def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_crops_shapes_dtypes_and_determinism(cache):
    crops = CropSettings(size=64, crops_per_frame=3)
    a = _take(generate_crops(cache, np.random.default_rng(5), crops=crops), 7)
    b = _take(generate_crops(cache, np.random.default_rng(5), crops=crops), 7)
    c = _take(generate_crops(cache, np.random.default_rng(6), crops=crops), 7)
    for (xa, ya, ma), (xb, yb, mb) in zip(a, b):
        assert xa.shape == ya.shape == (64, 64)
        assert xa.dtype == np.float32 and ya.dtype == np.uint8
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert ma == mb
    assert not np.array_equal(a[0][0], c[0][0])
    u8 = next(generate_crops(cache, np.random.default_rng(5), crops=crops, output="uint8"))[0]
    assert u8.dtype == np.uint8


def test_spot_crops_contain_spots(cache):
    crops = CropSettings(size=48, spot_fraction=1.0, augment=False)
    for _x, y, meta in _take(generate_crops(cache, np.random.default_rng(1), crops=crops), 30):
        assert y.sum() > 0
        target = cache[meta["projection"]]
        assert 0 <= meta["row0"] <= SHAPE[0] - 48 and 0 <= meta["col0"] <= SHAPE[1] - 48
        assert target.labels[meta["row0"]: meta["row0"] + 48,
                             meta["col0"]: meta["col0"] + 48].max() > 0


def test_crops_match_a_full_frame_composition(cache):
    """An unaugmented crop equals the same pixels of the whole synthetic frame (noise aside),
    and its normalisation statistics are those of the whole frame."""
    config = SynthesisConfig(tau=0.0)  # noise-free: exact comparison
    crops = CropSettings(size=40, augment=False, crops_per_frame=1)
    x, y, meta = next(generate_crops(cache, np.random.default_rng(2), config=config,
                                     crops=crops, background_seeds=[11]))
    from labdct_live.simulation.background import ProceduralBackground, beam_center_pixel

    p = cache[meta["projection"]]
    bg = ProceduralBackground(SHAPE, GEOMETRY.beamstop, 11,
                              center=beam_center_pixel(GEOMETRY)).render()
    full, _ = synthesize_input(p.clean, bg, tau=0.0, scale=meta["scale"], r_bg=meta["r_bg"])
    center, spread = normalization_stats(full)
    assert meta["center"] == pytest.approx(center, rel=1e-5)
    assert meta["spread"] == pytest.approx(spread, rel=1e-5)
    window = full[meta["row0"]: meta["row0"] + 40, meta["col0"]: meta["col0"] + 40]
    np.testing.assert_allclose(x, (window - center) / spread, rtol=1e-4, atol=1e-4)


def test_whole_frames_and_array_backgrounds(cache):
    backgrounds = np.full((2,) + SHAPE, 0.5, np.float32)
    x, y, meta = next(generate_crops(cache, np.random.default_rng(0),
                                     crops=CropSettings(size=None), backgrounds=backgrounds))
    assert x.shape == SHAPE and meta["background"].startswith("array:")
    with pytest.raises(DatasetError, match="same shape"):
        next(generate_crops(cache, np.random.default_rng(0), backgrounds=np.zeros((1, 8, 8))))
    with pytest.raises(DatasetError, match="output"):
        next(generate_crops(cache, np.random.default_rng(0), output="png"))
    with pytest.raises(DatasetError, match="crop size"):
        CropSettings(size=4)


def test_stream_tensors_deterministic_and_workers_differ(cache):
    crops = CropSettings(size=32, crops_per_frame=2)
    stream = SyntheticPairStream(cache, crops=crops, seed=9)
    x, y = next(iter(stream))
    assert x.shape == y.shape == (1, 32, 32) and x.dtype == y.dtype == torch.float32
    x2, _ = next(iter(SyntheticPairStream(cache.directory, crops=crops, seed=9)))
    assert torch.equal(x, x2)
    # forkserver: the parent has run numba-parallel code (LoG targets), which forked workers
    # must not inherit (GNU OpenMP is not fork-safe)
    loader = torch.utils.data.DataLoader(stream, batch_size=2, num_workers=2,
                                         multiprocessing_context="forkserver")
    it = iter(loader)
    first, second = next(it)[0], next(it)[0]  # one batch from each worker
    assert first.shape == (2, 1, 32, 32)
    assert not torch.equal(first, second)
    # worker k draws from default_rng([seed, k])
    for worker, batch in enumerate((first, second)):
        expected = generate_crops(cache, np.random.default_rng([9, worker]), crops=crops)
        for item in batch:
            np.testing.assert_array_equal(item[0].numpy(), next(expected)[0])


# ----------------------------------------------------------------- fixed datasets
def test_split_projections_disjoint(cache):
    train, val = split_projections(cache, 0.34, seed=1)
    assert len(val) == 2 and len(train) == 4 and not set(train) & set(val)
    with pytest.raises(DatasetError):
        split_projections(cache, 1.0)


def test_write_and_read_pair_dataset(cache, tmp_path):
    path = tmp_path / "pairs.h5"
    write_pair_dataset(path, cache, 20, validation_fraction=0.25,
                       crops=CropSettings(size=32, crops_per_frame=4), seed=1, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.h5"]  # no temporary left
    train, val = PairDataset(path, "train"), PairDataset(path, "validation")
    assert len(train) == 15 and len(val) == 5
    x, y = train[3]
    assert x.shape == y.shape == (1, 32, 32) and x.dtype == y.dtype == torch.float32
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}
    with h5py.File(path) as h5:
        assert h5.attrs["complete"] and h5["train/input"].chunks == (1, 32, 32)
        train_proj = set(h5["train"].attrs["projections"])
        val_proj = set(h5["validation"].attrs["projections"])
        assert not train_proj & val_proj
        assert set(h5["train/meta/projection"][()]) <= train_proj
        assert set(h5["validation/meta/projection"][()]) <= val_proj
    meta = train.meta()
    assert len(meta["scale"]) == 15 and meta["acquisition"][0].startswith("acq")
    with pytest.raises(FileExistsError):
        write_pair_dataset(path, cache, 2, progress=False)
    with pytest.raises(IndexError):
        train[15]
    # DataLoader workers open the file themselves (forkserver: see above)
    loader = torch.utils.data.DataLoader(train, batch_size=4, num_workers=1,
                                         multiprocessing_context="forkserver")
    batch = next(iter(loader))
    assert batch[0].shape == (4, 1, 32, 32)


def test_uint8_dataset_and_bad_files(cache, tmp_path):
    path = tmp_path / "paper.h5"
    write_pair_dataset(path, cache, 4, validation_fraction=0, output="uint8",
                       crops=CropSettings(size=32), progress=False)
    with h5py.File(path) as h5:
        assert h5["train/input"].dtype == np.uint8
    x, _ = PairDataset(path)[0]
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    with pytest.raises(DatasetError, match="split"):
        PairDataset(path, "test")
    with h5py.File(path, "r+") as h5:
        h5.attrs["complete"] = False
    with pytest.raises(DatasetError, match="incomplete"):
        PairDataset(path)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(DatasetError, match="cannot read"):
        PairDataset(tmp_path / "junk.h5")
    with pytest.raises(FileNotFoundError):
        PairDataset(tmp_path / "missing.h5")
