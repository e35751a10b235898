"""Tests of labdct_live.grains: the model, GrainMapper3D / GrainRecon / DREAM.3D files."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from labdct_live.grains.formats.dream3d import read_dream3d
from labdct_live.grains.formats.gm3d import GrainMapFormatError, read_gm3d, write_gm3d
from labdct_live.grains.formats.grainrecon import read_grainrecon
from labdct_live.grains.formats.registry import read_grainmap
from labdct_live.grains.grainmap import GrainMap
from labdct_live.grains.orientations import bunge_to_matrix, matrix_to_bunge
from labdct_live.grains.phase import GrainMapError, Phase

REPO = Path(__file__).resolve().parents[1]


def example_file() -> Path:
    """The GrainMapper3D example (LABDCT_TEST_DATA/gm3dh5/example.h5 or ../shared/data)."""
    env = os.environ.get("LABDCT_TEST_DATA")
    candidates = ([Path(env) / "gm3dh5" / "example.h5"] if env else []) + [
        REPO.parent / "shared" / "data" / "gm3dh5" / "example.h5"]
    for path in candidates:
        if path.is_file():
            return path
    pytest.skip("GrainMapper3D example.h5 not found: set LABDCT_TEST_DATA to a directory "
                "holding gm3dh5/example.h5 (from the gm3dh5 0.0.1 sdist) or place it at "
                "../shared/data/gm3dh5/example.h5 beside the checkout")


def cubic_angle_deg(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    """Cubic disorientation angle of U matrices, with the 24 rotations of scipy's group O."""
    ops = Rotation.create_group("O").as_matrix()
    rel = np.einsum("nji,njk->nik", u1, u2)  # U1^T U2
    angles = [Rotation.from_matrix(rel @ s).magnitude() for s in ops]
    return np.degrees(np.min(angles, axis=0))


@pytest.fixture
def small_map():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 12, size=(9, 10, 11)).astype(np.int32)
    ids[ids == 7] = 0  # an id that is absent
    orientations = Rotation.random(12, random_state=1).as_matrix()
    return GrainMap.from_grain_ids(ids, (0.004, 0.003, 0.002), orientations,
                                   center=(0.1, -0.2, 0.3))


# ----------------------------------------------------------------------------- conventions


def test_bunge_matrix_is_mtex_convention_and_orix_transpose():
    from orix.quaternion import Orientation

    euler = np.array([[30.0, 40.0, 50.0], [350.0, 10.0, 200.0]])
    u = bunge_to_matrix(euler)
    rz = lambda a: Rotation.from_euler("z", a, degrees=True).as_matrix()  # noqa: E731
    rx = lambda a: Rotation.from_euler("x", a, degrees=True).as_matrix()  # noqa: E731
    np.testing.assert_allclose(u[0], rz(30) @ rx(40) @ rz(50), atol=1e-12)
    # orix (like DREAM.3D) stores the passive rotation: the transpose.
    np.testing.assert_allclose(Orientation.from_euler(np.radians(euler)).to_matrix(),
                               np.swapaxes(u, 1, 2), atol=1e-12)
    np.testing.assert_allclose(matrix_to_bunge(u), euler, atol=1e-9)


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("version", [3, 4, 5])
def test_write_read_round_trip(tmp_path, small_map, version):
    path = write_gm3d(tmp_path / "map.h5", small_map, version=version, ipf=True,
                      acquisition={"SourceToSampleDistance": 13.0, "NumberOfProjections": 181})
    back = read_gm3d(path)
    np.testing.assert_array_equal(back.grain_ids, small_map.grain_ids)
    assert back.spacing == pytest.approx(small_map.spacing)
    assert back.center == pytest.approx(small_map.center)
    assert back.n_grains == small_map.n_grains == 10  # ids 1-11 without 7
    present = small_map.grain_list
    # Orientations come back as their fundamental-zone equivalents: same up to symmetry.
    assert cubic_angle_deg(back.orientations[present],
                           small_map.orientations[present]).max() < 1e-4
    assert back.phases == small_map.phases
    np.testing.assert_array_equal(back.completeness, (small_map.grain_ids > 0))
    np.testing.assert_array_equal(back.mask, (small_map.grain_ids > 0))
    assert back.metadata["version"] == version
    for source in ("euler", "quaternion"):
        other = read_gm3d(path, prefer=source)
        assert np.abs(other.orientations[present] - back.orientations[present]).max() < 1e-5


def test_file_layout(tmp_path, small_map):
    path = write_gm3d(tmp_path / "map.h5", small_map)
    with h5py.File(path, "r") as f:
        assert f["Version"][0] == 5 and f["Version"].dtype == np.int32
        np.testing.assert_allclose(f["LabDCT/Spacing"][()], [0.002, 0.003, 0.004])  # x, y, z
        np.testing.assert_allclose(f["LabDCT/Extent"][()], [11 * 0.002, 10 * 0.003, 9 * 0.004])
        np.testing.assert_allclose(f["LabDCT/Center"][()], [0.3, -0.2, 0.1])
        data = f["LabDCT/Data"]
        expected = {"GrainId": (np.int32, ()), "Completeness": (np.float32, ()),
                    "Mask": (np.uint8, ()), "PhaseId": (np.uint8, ()),
                    "Rodrigues": (np.float32, (3,)), "EulerZXZ": (np.float32, (3,)),
                    "Quaternion": (np.float32, (4,))}
        for name, (dtype, tail) in expected.items():
            assert data[name].dtype == dtype, name
            assert data[name].shape == (9, 10, 11) + tail, name
        ids = data["GrainId"][()]
        g = int(ids[ids > 0][0])
        voxel = tuple(np.argwhere(ids == g)[0])
        q = data["Quaternion"][voxel]
        r = data["Rodrigues"][voxel]
        e = data["EulerZXZ"][voxel]
        # Quaternion (w, x, y, z), Rodrigues = axis tan(angle/2), Euler in radians: one U.
        u_q = Rotation.from_quat([q[1], q[2], q[3], q[0]]).as_matrix()
        u_r = Rotation.from_rotvec(2 * np.arctan(np.linalg.norm(r)) * r
                                   / np.linalg.norm(r)).as_matrix()
        u_e = Rotation.from_euler("ZXZ", e).as_matrix()
        np.testing.assert_allclose(u_q, u_r, atol=1e-5)
        np.testing.assert_allclose(u_q, u_e, atol=1e-5)
        assert np.all(data["Rodrigues"][()][ids == 0] == 0)
        assert f["PhaseInfo/Phase01/SpaceGroup"][0] == 225
        assert h5py.check_string_dtype(f["PhaseInfo/Phase01/Name"].dtype) is not None
    assert not list(tmp_path.glob(".*partial"))


# ----------------------------------------------------------------------------- example file


def test_read_example_file():
    path = example_file()
    gm = read_gm3d(path)
    assert gm.n_grains == 141
    assert gm.shape == (50, 25, 25)
    assert gm.spacing == pytest.approx((0.02, 0.02, 0.02))
    assert gm.phases[1].space_group == 225 and gm.phases[1].is_cubic
    # Independent: the Rodrigues vector of grain 57 read with h5py -> U with scipy/orix.
    from orix.quaternion import Orientation

    with h5py.File(path, "r") as f:
        ids = f["LabDCT/Data/GrainId"][()]
        voxel = tuple(np.argwhere(ids == 57)[0])
        r = f["LabDCT/Data/Rodrigues"][voxel].astype(float)
    angle = 2 * np.arctan(np.linalg.norm(r))
    u = Rotation.from_rotvec(angle * r / np.linalg.norm(r)).as_matrix()
    np.testing.assert_allclose(gm.orientations[57], u, atol=1e-6)
    # The Bunge angles we report describe the same orientation for orix (passive = U^T).
    euler = gm.euler_deg()[57]
    np.testing.assert_allclose(Orientation.from_euler(np.radians(euler)).to_matrix()[0], u.T,
                               atol=1e-6)


def test_example_file_survives_rewrite(tmp_path):
    gm = read_gm3d(example_file())
    path = write_gm3d(tmp_path / "copy.h5", gm)
    with h5py.File(example_file(), "r") as a, h5py.File(path, "r") as b:
        for name in ("GrainId", "Mask", "PhaseId", "Completeness", "Rodrigues"):
            np.testing.assert_array_equal(a[f"LabDCT/Data/{name}"][()],
                                          b[f"LabDCT/Data/{name}"][()])


# ----------------------------------------------------------------------------- other formats


def test_read_grainrecon_euler_in_degrees(tmp_path, small_map):
    path = write_gm3d(tmp_path / "gr.h5", small_map)
    with h5py.File(path, "r+") as f:
        euler = f["LabDCT/Data/EulerZXZ"]
        euler[...] = np.degrees(euler[()])
        f["LabDCT/Data/Rodrigues"][...] = 0  # make sure the Euler angles are what is read
    gm = read_grainrecon(path)
    present = small_map.grain_list
    assert cubic_angle_deg(gm.orientations[present],
                           small_map.orientations[present]).max() < 1e-4
    assert gm.metadata["format"] == "grainrecon"


def _write_dream3d(path, ids, euler_rad=None, quats=None, spacing_um=(2.0, 3.0, 4.0),
                   origin_um=(10.0, 20.0, 30.0)):
    with h5py.File(path, "w") as f:
        base = f.create_group("DataContainers/ImageDataContainer")
        geom = base.create_group("_SIMPL_GEOMETRY")
        geom["DIMENSIONS"] = np.array(ids.shape[::-1], np.int64)
        geom["SPACING"] = np.array(spacing_um, np.float32)
        geom["ORIGIN"] = np.array(origin_um, np.float32)
        cell = base.create_group("CellData")
        cell["FeatureIds"] = ids[..., None].astype(np.int32)
        cell["Phases"] = (ids > 0)[..., None].astype(np.int32)
        if euler_rad is not None:
            cell["EulerAngles"] = euler_rad.astype(np.float32)
        if quats is not None:
            cell["Quats"] = quats.astype(np.float32)
        ens = base.create_group("CellEnsembleData")
        ens["CrystalStructures"] = np.array([[999], [1]], np.uint32)
        ens["LatticeConstants"] = np.array([[0] * 6, [4.05, 4.05, 4.05, 90, 90, 90]], np.float32)


def test_read_dream3d_euler_and_quaternions(tmp_path):
    from orix.quaternion import Orientation

    rng = np.random.default_rng(3)
    ids = rng.integers(1, 6, size=(4, 5, 6))
    euler_deg = rng.uniform([0, 0, 0], [360, 180, 360], size=(6, 3))
    per_voxel = np.radians(euler_deg)[ids]
    path = tmp_path / "a.dream3d"
    _write_dream3d(path, ids, euler_rad=per_voxel)
    gm = read_grainmap(path)
    np.testing.assert_allclose(gm.orientations[1:6], bunge_to_matrix(euler_deg[1:6]), atol=1e-5)
    assert gm.spacing == pytest.approx((0.004, 0.003, 0.002))
    # ORIGIN is the corner: centre = origin + extent / 2 (x, y, z -> z, y, x)
    assert gm.center == pytest.approx((0.030 + 0.008, 0.020 + 0.0075, 0.010 + 0.006))
    assert gm.phases[1].is_cubic
    # DREAM.3D quaternions (x, y, z, w) of the passive rotation, as orix computes it.
    q_wxyz = Orientation.from_euler(np.radians(euler_deg)).data
    quats = q_wxyz[:, [1, 2, 3, 0]][ids]
    path_q = tmp_path / "q.dream3d"
    _write_dream3d(path_q, ids, quats=quats)
    gq = read_dream3d(path_q)
    np.testing.assert_allclose(gq.orientations[1:6], gm.orientations[1:6], atol=1e-5)


# ----------------------------------------------------------------------------- bad input


def test_missing_dataset_is_named(tmp_path, small_map):
    path = write_gm3d(tmp_path / "m.h5", small_map)
    with h5py.File(path, "r+") as f:
        del f["LabDCT/Data/GrainId"]
    with pytest.raises(GrainMapFormatError, match="/LabDCT/Data/GrainId is missing"):
        read_gm3d(path)
    with h5py.File(path, "r+") as f:
        f["LabDCT/Data/GrainId"] = small_map.grain_ids
        for name in ("Rodrigues", "EulerZXZ", "Quaternion"):
            del f[f"LabDCT/Data/{name}"]
    with pytest.raises(GrainMapFormatError, match="no orientation dataset"):
        read_gm3d(path)
    with pytest.raises(FileNotFoundError):
        read_gm3d(tmp_path / "absent.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(GrainMapFormatError, match="/Version is missing"):
        read_grainmap(other)
    with h5py.File(other, "w") as f:
        f.create_group("DataContainers/Empty")
    with pytest.raises(GrainMapFormatError, match="pass container"):
        read_dream3d(other)


def test_unsupported_version(tmp_path, small_map):
    path = write_gm3d(tmp_path / "v.h5", small_map)
    with h5py.File(path, "r+") as f:
        f["Version"][0] = 2
    with pytest.raises(GrainMapFormatError, match="version 2"):
        read_gm3d(path)
    with pytest.raises(GrainMapError, match="version=7"):
        write_gm3d(tmp_path / "w.h5", small_map, version=7)


def test_model_validation():
    ids = np.array([[[0, 1], [2, 2]]], np.int32)
    u = np.repeat(np.eye(3)[None], 3, axis=0)
    with pytest.raises(GrainMapError, match="no orientation"):
        GrainMap.from_grain_ids(ids, 0.01, {1: np.eye(3)})
    with pytest.raises(GrainMapError, match="not in phases"):
        GrainMap.from_grain_ids(ids, 0.01, u, phase_ids=2)
    with pytest.raises(GrainMapError, match="not proper rotation"):
        GrainMap.from_grain_ids(ids, 0.01, 2 * u)
    with pytest.raises(GrainMapError, match="spacing"):
        GrainMap.from_grain_ids(ids, 0.0, u)
    with pytest.raises(GrainMapError, match="3D"):
        GrainMap.from_grain_ids(ids[0], 0.01, u)
    with pytest.raises(GrainMapError, match="space_group"):
        Phase("x", 0, (1, 1, 1, 90, 90, 90))
    gm = GrainMap.from_grain_ids(ids, 0.01, {1: np.eye(3), 2: np.eye(3)},
                                 phases=[{"name": "Al", "space_group": 225,
                                          "unit_cell": (4.05, 4.05, 4.05, 90, 90, 90)}])
    assert gm.n_grains == 2
    np.testing.assert_allclose(gm.equivalent_diameters()[2], np.cbrt(6 * 2e-6 / np.pi))
