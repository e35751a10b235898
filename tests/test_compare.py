"""Tests of labdct_live.grains.compare on synthetic Voronoi maps with known damage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from labdct_live.grains.compare.boundaries import deviation_map
from labdct_live.grains.compare.comparison import compare_grainmaps, delta_gb_ratio
from labdct_live.grains.compare.pairing import (
    CLASS_FALSE_NEGATIVE,
    CLASS_FALSE_POSITIVE,
    CLASS_ONE_TO_MULTI,
    CLASS_ONE_TO_ONE,
)
from labdct_live.grains.compare.registration import (
    EmptyGrainMapError,
    NonCubicPhaseError,
    Registration,
    VoxelSizeMismatchError,
    register,
)
from labdct_live.grains.compare.report import write_report
from labdct_live.grains.formats.gm3d import write_gm3d
from labdct_live.grains.grainmap import GrainMap
from labdct_live.grains.phase import GrainMapError, Phase

SPACING = 0.005  # mm


def voronoi_ids(shape, n_grains, seed, cylinder_margin=None):
    """Voronoi grain ids 1..n; zero outside a vertical cylinder when a margin is given."""
    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, 1, (n_grains, 3)) * np.asarray(shape)
    centres = np.indices(shape).reshape(3, -1).T + 0.5
    ids = (cKDTree(seeds).query(centres)[1] + 1).reshape(shape).astype(np.int32)
    if cylinder_margin is not None:
        _, ny, nx = shape
        y, x = np.ogrid[:ny, :nx]
        radius = min(ny, nx) / 2 - cylinder_margin
        outside = (y - (ny - 1) / 2) ** 2 + (x - (nx - 1) / 2) ** 2 > radius**2
        ids[:, outside] = 0
        ids[:cylinder_margin] = 0
        ids[-cylinder_margin:] = 0
    # Renumber 1..n over the grains that survived.
    present = np.unique(ids[ids > 0])
    lut = np.zeros(ids.max() + 1, np.int32)
    lut[present] = np.arange(1, len(present) + 1)
    return lut[ids]


def random_orientations(n_rows, seed):
    return Rotation.random(n_rows, random_state=seed).as_matrix()


def make_map(ids, orientations, spacing=SPACING, **kw):
    return GrainMap.from_grain_ids(ids, spacing, orientations, **kw)


def brute_force_delta_gb(ref_ids, rec_ids, grain_id, partners, spacing):
    """Eq. 4 by explicit neighbour tests and a k-d tree: an independent implementation."""

    def boundary_points(region):
        padded = np.pad(region, 1, mode="edge")  # the volume edge is no boundary
        core = padded[1:-1, 1:-1, 1:-1]
        differs = np.zeros_like(region)
        for axis in range(3):
            for step in (-1, 1):
                differs |= core != np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(region & differs) * np.asarray(spacing)

    ref_pts = boundary_points(ref_ids == grain_id)
    rec_pts = boundary_points(np.isin(rec_ids, partners))
    return cKDTree(rec_pts).query(ref_pts)[0].mean()


# ----------------------------------------------------------------------------- damaged map


@pytest.fixture(scope="module")
def damaged():
    """Reference with a cuboid grain; reconstruction with known damage and a known shift."""
    shape = (60, 64, 64)
    ids = voronoi_ids(shape, 45, seed=1, cylinder_margin=4)
    box = (slice(24, 34), slice(26, 38), slice(28, 36))  # the cuboid grain, well inside
    cuboid = ids.max() + 1
    ids[box] = cuboid
    n = cuboid
    orientations = random_orientations(n + 3, seed=2)
    ref = make_map(ids, orientations[: n + 1])

    k = 2  # the cuboid grows by k voxels on every face
    rec_ids = ids.copy()
    grown = tuple(slice(s.start - k, s.stop + k) for s in box)
    rec_ids[grown] = cuboid
    # Grains that neither touch the grown cuboid nor are otherwise damaged.
    near_cuboid = set(np.unique(ids[grown]).tolist()) - {0, cuboid}
    counts = np.bincount(ids.ravel())
    far = [g for g in range(1, n) if g not in near_cuboid and counts[g] > 800]
    removed, split, reoriented = far[:3], far[3:5], far[5]
    for g in removed:
        rec_ids[rec_ids == g] = 0
    rec_orient = orientations.copy()
    for j, g in enumerate(split):
        # Split at the grain's median z; the new part gets a fresh id and the same orientation.
        zs = np.nonzero(rec_ids == g)[0]
        new_id = n + 1 + j
        rec_ids[(rec_ids == g) & (np.arange(shape[0])[:, None, None] > np.median(zs))] = new_id
        rec_orient[new_id] = orientations[g]
    rec_orient[reoriented] = Rotation.from_rotvec(
        np.radians(5) * np.array([0.6, 0.8, 0.0])).as_matrix() @ orientations[reoriented]
    shift = np.array([2, -3, 1])  # rec content sits `shift` voxels further along each axis
    rec_shifted = np.roll(rec_ids, shift, axis=(0, 1, 2))
    assert not np.any(rec_ids[:2]) and not np.any(rec_ids[-2:])  # the roll wraps only zeros
    rec = make_map(rec_shifted, rec_orient)
    return {"ref": ref, "rec": rec, "rec_ids_unshifted": rec_ids, "shift": shift, "k": k,
            "cuboid": cuboid, "removed": removed, "split": split, "reoriented": reoriented,
            "near_cuboid": near_cuboid, "n": n, "comparison": compare_grainmaps(ref, rec)}


def test_registration_finds_the_known_translation(damaged):
    reg = damaged["comparison"].registration
    np.testing.assert_allclose(reg.translation_mm, damaged["shift"] * SPACING, atol=1e-12)
    np.testing.assert_array_equal(damaged["comparison"].rec_ids, damaged["rec_ids_unshifted"])


def test_counts_match_the_damage(damaged):
    n = damaged["n"]
    counts = damaged["comparison"].counts()
    assert counts == {
        "reference": n,
        "indexed": n - 3 + 2,  # 3 removed, 2 split in two
        "one_to_one": n - 3 - 2 - 1,
        "one_to_multi": 2,
        "one_to_multi_partners": 4,
        "false_negative": 3 + 1,  # removed + reoriented by 5°
        "false_positive": 1,  # the reoriented grain
    }
    ref = damaged["comparison"].reference_grains
    assert set(ref.index[ref["class"] == CLASS_FALSE_NEGATIVE]) == set(
        damaged["removed"] + [damaged["reoriented"]])
    for g in damaged["split"]:
        assert ref.at[g, "class"] == CLASS_ONE_TO_MULTI
        assert ref.at[g, "partners"] == (g, damaged["n"] + 1 + damaged["split"].index(g))
    rec = damaged["comparison"].reconstructed_grains
    assert rec.index[rec["class"] == CLASS_FALSE_POSITIVE].tolist() == [damaged["reoriented"]]
    assert ref.at[damaged["cuboid"], "class"] == CLASS_ONE_TO_ONE


def test_delta_gb_matches_the_damage(damaged):
    ref = damaged["comparison"].reference_grains
    # Every boundary voxel of the cuboid is exactly k voxels from the grown cuboid's surface.
    assert ref.at[damaged["cuboid"], "delta_gb_mm"] == pytest.approx(damaged["k"] * SPACING,
                                                                      abs=1e-12)
    untouched = [g for g in ref.index[ref["n_partners"] > 0]
                 if g not in damaged["near_cuboid"] and g != damaged["cuboid"]]
    assert len(untouched) > 20
    assert np.all(ref.loc[untouched, "delta_gb_mm"] == 0)  # includes the split grains
    near = [g for g in damaged["near_cuboid"] if ref.at[g, "n_partners"] > 0]
    assert np.all(ref.loc[near, "delta_gb_mm"] > 0)


def test_delta_gb_agrees_with_brute_force(damaged):
    comp = damaged["comparison"]
    ref = comp.reference_grains
    checked = [damaged["cuboid"], *damaged["split"], *sorted(damaged["near_cuboid"])[:4]]
    for g in checked:
        expected = brute_force_delta_gb(comp.reference.grain_ids, comp.rec_ids, g,
                                        ref.at[g, "partners"], (SPACING,) * 3)
        assert ref.at[g, "delta_gb_mm"] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_delta_gb_anisotropic_spacing_agrees_with_brute_force():
    ids = voronoi_ids((30, 32, 34), 12, seed=5)
    spacing = (0.004, 0.002, 0.003)
    orient = random_orientations(13, seed=6)
    rec_ids = ids.copy()
    rec_ids[:, :, 1:][ids[:, :, :-1] == 3] = 3  # grain 3 grows one voxel along +x
    comp = compare_grainmaps(make_map(ids, orient, spacing=spacing),
                             make_map(rec_ids, orient, spacing=spacing), register_maps=False)
    ref = comp.reference_grains
    for g in ref.index:
        expected = brute_force_delta_gb(ids, rec_ids, g, ref.at[g, "partners"], spacing)
        assert ref.at[g, "delta_gb_mm"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert ref.at[3, "delta_gb_mm"] > 0


def test_deviation_map_of_the_cuboid(damaged):
    dev = deviation_map(damaged["comparison"], damaged["cuboid"])
    # Boundary voxels of a 10 x 12 x 8 box: all voxels minus the interior 8 x 10 x 6.
    assert len(dev) == 10 * 12 * 8 - 8 * 10 * 6
    np.testing.assert_allclose(dev["distance_mm"], damaged["k"] * SPACING)
    ref = damaged["ref"]
    assert dev["z_mm"].min() == pytest.approx(ref.origin[0] + 24 * SPACING)
    with pytest.raises(GrainMapError, match="false negative"):
        deviation_map(damaged["comparison"], damaged["removed"][0])


# ----------------------------------------------------------------------------- rotation


def test_known_rotation_and_translation_are_recovered():
    shape = (48, 52, 52)
    ids = voronoi_ids(shape, 30, seed=11, cylinder_margin=5)
    n = ids.max()
    orient = random_orientations(n + 1, seed=12)
    rot = Rotation.from_rotvec(np.radians(3.0) * np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0))
    t_zyx = np.array([1.5, -2.0, 0.5]) * SPACING
    ref = make_map(ids, orient)
    # Reconstruction grid = reference grid; rec point q (x, y, z) holds reference point
    # R^T (q - t): nearest-neighbour resampling of the reference.
    r_zyx = rot.as_matrix()[::-1, ::-1]
    spacing = np.full(3, SPACING)
    matrix = r_zyx.T
    offset = (r_zyx.T @ (ref.origin - t_zyx) - ref.origin) / spacing
    rec_ids = ndimage.affine_transform(ids, matrix, offset=offset, order=0)
    rec = make_map(rec_ids, np.einsum("ij,njk->nik", rot.as_matrix(), orient))

    without = compare_grainmaps(ref, rec)
    assert without.counts()["false_negative"] == n  # 3° > the 1° threshold

    comp = compare_grainmaps(ref, rec, fit_rotation=True)
    reg = comp.registration
    assert np.degrees((Rotation.from_matrix(reg.rotation) * rot.inv()).magnitude()) < 1e-3
    np.testing.assert_allclose(reg.translation_mm, t_zyx, atol=0.2 * SPACING)
    assert comp.counts()["one_to_one"] == n
    assert comp.counts()["false_positive"] == 0
    assert comp.reference_grains["misorientation_deg"].max() < 1e-3
    assert comp.reference_grains["delta_gb_mm"].mean() < 0.5 * SPACING


def test_register_without_rotation_keeps_identity():
    ids = voronoi_ids((32, 32, 32), 15, seed=3)
    gm = make_map(ids, random_orientations(16, seed=4))
    reg = register(gm, gm)
    np.testing.assert_array_equal(reg.translation_mm, 0)
    np.testing.assert_array_equal(reg.rotation, np.eye(3))


# ----------------------------------------------------------------------------- pairing rules


def test_pairing_threshold_uses_cubic_symmetry():
    ids = voronoi_ids((24, 24, 24), 4, seed=7)
    orient = random_orientations(5, seed=8)
    # Crystal-side cubic symmetry (90° about [001]) plus a small extra rotation.
    sym = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    rec_orient = orient.copy()
    for g, angle in ((1, 0.9), (2, 1.1), (3, 0.0)):
        extra = Rotation.from_rotvec(np.radians(angle) * np.array([0, 0.6, 0.8])).as_matrix()
        rec_orient[g] = extra @ orient[g] @ sym
    comp = compare_grainmaps(make_map(ids, orient), make_map(ids, rec_orient),
                             register_maps=False)
    ref = comp.reference_grains
    assert ref.at[1, "class"] == CLASS_ONE_TO_ONE
    assert ref.at[1, "misorientation_deg"] == pytest.approx(0.9, abs=1e-6)
    assert ref.at[2, "class"] == CLASS_FALSE_NEGATIVE
    assert ref.at[3, "misorientation_deg"] == pytest.approx(0.0, abs=1e-5)
    loose = compare_grainmaps(make_map(ids, orient), make_map(ids, rec_orient),
                              register_maps=False, threshold_deg=1.2)
    assert loose.counts()["one_to_one"] == 4


def test_centroid_distance_limit_and_overlap_free_pairing():
    ids = np.zeros((20, 20, 40), np.int32)
    ids[5:15, 5:15, 2:12] = 1
    ids[5:15, 5:15, 25:35] = 2
    orient = random_orientations(3, seed=9)
    orient[2] = orient[1]  # two far-apart grains with the same orientation
    rec_ids = np.zeros_like(ids)
    rec_ids[5:15, 5:15, 2:12] = 1
    ref = make_map(ids, orient)
    rec = make_map(rec_ids, orient[:2])
    loose = compare_grainmaps(ref, rec, register_maps=False, require_overlap=False)
    # Without overlap or distance rules, the lone rec grain pairs with its best partner only.
    assert loose.counts()["one_to_one"] == 1
    far = compare_grainmaps(ref, make_map(np.roll(rec_ids, 23, axis=2), orient[:2]),
                            register_maps=False, require_overlap=False)
    assert far.reference_grains.at[1, "class"] == CLASS_FALSE_NEGATIVE
    assert far.reference_grains.at[2, "class"] == CLASS_ONE_TO_ONE
    limited = compare_grainmaps(ref, make_map(np.roll(rec_ids, 23, axis=2), orient[:2]),
                                register_maps=False, require_overlap=False,
                                max_distance_mm=5 * SPACING)
    assert limited.reference_grains.at[2, "class"] == CLASS_ONE_TO_ONE
    limited2 = compare_grainmaps(ref, make_map(np.roll(rec_ids, 10, axis=2), orient[:2]),
                                 register_maps=False, require_overlap=False,
                                 max_distance_mm=5 * SPACING)
    assert limited2.counts()["false_positive"] == 1


# ----------------------------------------------------------------------------- ratio


def test_delta_gb_ratio_of_two_reconstructions():
    ids = voronoi_ids((40, 40, 40), 20, seed=13)
    box = (slice(14, 24), slice(15, 25), slice(16, 26))
    cube = ids.max() + 1
    ids[box] = cube
    orient = random_orientations(cube + 1, seed=14)
    ref = make_map(ids, orient)
    recs = []
    for k in (2, 1):
        r = ids.copy()
        r[tuple(slice(s.start - k, s.stop + k) for s in box)] = cube
        recs.append(compare_grainmaps(ref, make_map(r, orient), register_maps=False,
                                      label=f"grown {k}"))
    table, stats = delta_gb_ratio(*recs)
    assert table.at[cube, "ratio"] == pytest.approx(2.0)
    finite = table["ratio"][np.isfinite(table["ratio"])]
    assert stats["n_common"] == len(table) == recs[0].counts()["one_to_one"]
    assert stats["mean"] == pytest.approx(finite.mean())
    assert stats["fraction_above_1"] == pytest.approx((finite > 1).mean())
    assert stats["max"] >= 2.0


# ----------------------------------------------------------------------------- bad input


def test_mismatched_voxel_sizes_need_resampling():
    ids = voronoi_ids((40, 40, 40), 8, seed=15)
    orient = random_orientations(9, seed=16)
    ref = make_map(ids, orient)
    coarse_ids = ids[::2, ::2, ::2]
    # Coarse voxel m sits where fine voxel 2m sits.
    coarse_center = ref.origin + (np.array(coarse_ids.shape) - 1) * SPACING
    coarse = make_map(coarse_ids, orient, spacing=2 * SPACING, center=tuple(coarse_center))
    with pytest.raises(VoxelSizeMismatchError, match="resample=True"):
        compare_grainmaps(ref, coarse)
    comp = compare_grainmaps(ref, coarse, resample=True)
    assert comp.counts()["one_to_one"] == 8
    assert comp.reference_grains["delta_gb_mm"].max() <= 2 * SPACING


def test_empty_and_non_cubic_maps_are_refused():
    ids = voronoi_ids((16, 16, 16), 3, seed=17)
    orient = random_orientations(4, seed=18)
    gm = make_map(ids, orient)
    empty = make_map(np.zeros_like(ids), orient[:1])
    with pytest.raises(EmptyGrainMapError, match="reconstruction grain map has no grain"):
        compare_grainmaps(gm, empty)
    with pytest.raises(EmptyGrainMapError, match="reference grain map has no grain"):
        compare_grainmaps(empty, gm)
    titanium = Phase("Titanium", 194, (2.95, 2.95, 4.68, 90, 90, 120))
    hexagonal = make_map(ids, orient, phases=[titanium])
    with pytest.raises(NonCubicPhaseError, match="Titanium.*194"):
        compare_grainmaps(gm, hexagonal)
    with pytest.raises(GrainMapError, match="threshold_deg"):
        compare_grainmaps(gm, gm, threshold_deg=0)


def test_no_overlap_after_registration_is_an_error():
    ids = voronoi_ids((16, 16, 16), 3, seed=19)
    gm = make_map(ids, random_orientations(4, seed=20))
    far = Registration(translation_mm=np.array([1.0, 0.0, 0.0]))
    with pytest.raises(EmptyGrainMapError, match="does not overlap"):
        compare_grainmaps(gm, gm, registration=far)


# ----------------------------------------------------------------------------- report and CLI


def test_report_and_cli(tmp_path, damaged):
    from labdct_live.cli import main

    ref_path = write_gm3d(tmp_path / "ref.h5", damaged["ref"])
    rec_path = write_gm3d(tmp_path / "rec.h5", damaged["rec"])
    second_path = write_gm3d(tmp_path / "second.h5", damaged["ref"])
    out = tmp_path / "report"
    code = main(["compare", str(ref_path), str(rec_path), "--second", str(second_path),
                 "--out", str(out), "--grains", str(damaged["cuboid"])])
    assert code == 0
    text = (out / "report.md").read_text()
    n = damaged["n"]
    assert f"| {n} |" in text and "| 2 (4) |" in text
    for name in ("size_distributions.png", "delta_gb_vs_size.png", "ratio_vs_size.png",
                 f"deviation_grain{damaged['cuboid']}_reconstruction1.png",
                 "reconstruction1_reference_grains.csv", "delta_gb_ratio.csv"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*partial"))

    bad = main(["compare", str(ref_path), str(tmp_path / "missing.h5"), "--out", str(out)])
    assert bad == 2


def test_write_report_single(tmp_path, damaged):
    path = write_report([damaged["comparison"]], tmp_path / "r", deviation_grains=[])
    text = path.read_text()
    counts = damaged["comparison"].counts()
    row = next(line for line in text.splitlines() if line.startswith("| reconstruction |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == str(counts["reference"]) and cells[3] == str(counts["indexed"])
    assert cells[6] == str(counts["false_negative"]) and cells[8] == str(counts["false_positive"])
    assert "## δ_GB ratio" not in text and not (tmp_path / "r" / "ratio_vs_size.png").exists()
    assert not list((tmp_path / "r").glob("deviation_*"))


def test_simulator_ground_truth_with_known_damage():
    """The simulator's own D18 ground truth, damaged: exact counts, δ_GB = 0 where untouched."""
    presets = pytest.importorskip("labdct_live.simulation.presets")
    microstructure = pytest.importorskip("labdct_live.simulation.microstructure")
    scanfiles = pytest.importorskip("labdct_live.simulation.scanfolder")
    spec, _ = presets.preset("D18")
    truth = scanfiles.grainmap_of(microstructure.make_sample(spec, seed=4))
    ids = np.pad(truth.grain_ids, 4)  # room for the shift
    ref = truth.copy(grain_ids=ids)
    n_rows = len(ref.orientations)
    present = ref.grain_list
    counts = np.bincount(ids.ravel())
    big = [int(g) for g in present if counts[g] > 100]
    removed, split = big[:5], big[5:8]
    rec_ids = ids.copy()
    rec_ids[np.isin(rec_ids, removed)] = 0
    rec_orient = np.concatenate([ref.orientations, ref.orientations[split]])
    for j, g in enumerate(split):
        xs = np.nonzero(rec_ids == g)[2]
        rec_ids[(rec_ids == g) & (np.arange(ids.shape[2]) > np.median(xs))] = n_rows + j
    rec = ref.copy(grain_ids=np.roll(rec_ids, (1, 2, -1), axis=(0, 1, 2)),
                   orientations=rec_orient, phase_ids=np.ones(len(rec_orient), np.int64))
    comp = compare_grainmaps(ref, rec)
    np.testing.assert_allclose(comp.registration.translation_mm,
                               np.array([1, 2, -1]) * ref.spacing, atol=1e-12)
    n = len(present)
    assert comp.counts() == {"reference": n, "indexed": n - 5 + 3, "one_to_one": n - 8,
                             "one_to_multi": 3, "one_to_multi_partners": 6,
                             "false_negative": 5, "false_positive": 0}
    paired = comp.reference_grains[comp.reference_grains["n_partners"] > 0]
    assert np.all(paired["delta_gb_mm"] == 0)
