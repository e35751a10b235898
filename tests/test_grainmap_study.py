"""The helpers of benchmarks/grainmap_study.py: OR-binning and the size ratio of split grains."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from labdct_live.grains.compare.comparison import compare_grainmaps
from labdct_live.grains.grainmap import GrainMap
from labdct_live.simulation.geometry import Geometry

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("grainmap_study",
                                                  ROOT / "benchmarks" / "grainmap_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bin_or_keeps_every_spot_pixel_where_the_binned_geometry_puts_it(study):
    frames = np.zeros((2, 8, 12), dtype=bool)
    frames[0, 3, 5] = True  # one pixel lights its whole 2 x 2 block
    frames[1, 6:8, 0:2] = True
    binned = study.bin_or(frames, 2)
    assert binned.shape == (2, 4, 6) and binned.dtype == bool
    assert np.argwhere(binned).tolist() == [[0, 1, 2], [1, 3, 0]]
    assert study.bin_or(frames, 1).sum() == 5
    # the binned geometry maps pixel block (2i, 2i + 1) to pixel i: the beam centre moves with it
    g = Geometry().binned((1016, 1016))
    rc, cc = Geometry().center
    assert g.center == pytest.approx(((rc + 0.5) / 2 - 0.5, (cc + 0.5) / 2 - 0.5))
    with pytest.raises(ValueError, match="divisor"):
        study.bin_or(frames, 3)


def test_size_ratio_combines_the_parts_of_a_split_grain(study):
    ids = np.ones((10, 10, 10), dtype=np.int32)
    ids[:, :, 5:] = 2
    orientations = np.concatenate([np.eye(3)[None],
                                   Rotation.random(2, random_state=1).as_matrix()])
    truth = GrainMap.from_grain_ids(ids, (0.01,) * 3, orientations)
    split = ids.copy()
    split[:5, :, :5] = 3  # grain 1 reconstructed as two grains of its orientation
    rec = GrainMap.from_grain_ids(split, (0.01,) * 3,
                                  np.concatenate([orientations, orientations[1:2]]))
    comp = compare_grainmaps(truth, rec)
    assert comp.counts()["one_to_multi"] == 1
    ratios = study.size_ratios(comp)
    assert ratios["ratio"].to_numpy() == pytest.approx([1.0, 1.0])
