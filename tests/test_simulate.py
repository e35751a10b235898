"""The forward simulator against independent calculations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.transform import Rotation

from labdct_live.simulation.crystal import MATERIALS
from labdct_live.simulation.forward import Simulator
from labdct_live.simulation.geometry import Geometry
from labdct_live.simulation.microstructure import (
    SampleSpec,
    cell_tree,
    make_sample,
    random_orientations,
    single_crystal_sample,
)

HC = 12.398419843
ORIENTATION = Rotation.from_euler("ZXZ", [33.0, 47.0, 121.0], degrees=True).as_matrix()


def expected_reflections(orientation, material, geometry, omega, e_min, e_max):
    """Independent Laue calculation for a point crystal at the origin.

    The incident beam at the origin is +x. The diffracted direction is built from the Bragg
    angle and the scattering plane (not from k_in + 2 sin(theta) G/|G|), and it is intersected
    with the untilted detector plane x = Lsd.
    """
    out = {}
    w = np.deg2rad(omega)
    rot = np.array([[np.cos(w), -np.sin(w), 0], [np.sin(w), np.cos(w), 0], [0, 0, 1]])
    k_in = np.array([1.0, 0.0, 0.0])
    for hkl in material.reflections.hkl:
        d = material.a / np.linalg.norm(hkl)  # d-spacing, Å
        g = rot @ orientation @ (hkl / np.linalg.norm(hkl))  # unit plane normal, lab frame
        sin_theta = -k_in @ g
        if sin_theta <= 0:
            continue
        theta = np.arcsin(sin_theta)
        energy = HC / (2 * d * sin_theta)  # Bragg's law, lambda = 2 d sin(theta)
        if not e_min <= energy <= e_max:
            continue
        perp = g - (g @ k_in) * k_in
        perp /= np.linalg.norm(perp)
        # k_out lies in the scattering plane (k_in, G), 2θ from k_in, on the side of G's
        # component perpendicular to the beam
        k_out = np.cos(2 * theta) * k_in + np.sin(2 * theta) * perp
        hit = k_out * geometry.lsd / k_out[0]
        row = geometry.center[0] - hit[2] / geometry.pixel_size
        col = geometry.center[1] - hit[1] / geometry.pixel_size
        rows, cols = geometry.detector_shape
        if not (0 <= row < rows and 0 <= col < cols):
            continue
        if geometry.beamstop_mask()[int(round(row)), int(round(col))]:
            continue
        out[tuple(int(v) for v in hkl)] = dict(row=row, col=col, energy=energy,
                                               two_theta=np.rad2deg(2 * theta))
    return out


@pytest.fixture(scope="module")
def point_crystal():
    sample = single_crystal_sample(ORIENTATION, "Al", size=0.002)
    geometry = Geometry(n_projections=1)
    return Simulator(sample, geometry, oversample=1, blur_sigma=1.0, absorption=False)


@pytest.mark.parametrize("omega", np.arange(-180.0, 180.0, 20.0) + 3.0)
def test_single_crystal_spots_where_independent_calculation_puts_them(point_crystal, omega):
    sim = point_crystal
    spec = sim._spectrum
    projection = sim.project(omega)
    expected = expected_reflections(ORIENTATION, MATERIALS["Al"], sim.geometry, omega,
                                    spec.e_min, spec.e_max)
    spots = projection.spots
    got = {(r.h, r.k, r.l): r for r in spots.itertuples()}
    # Spots a pixel from the detector edge or the beam stop lose part of their blur; compare
    # the reflection sets away from those borders.
    assert set(got) == set(expected), (sorted(got), sorted(expected))
    assert len(expected) > 0
    for hkl, e in expected.items():
        s = got[hkl]
        assert s.energy_kev == pytest.approx(e["energy"], rel=1e-9)
        assert spec.e_min <= s.energy_kev <= spec.e_max
        assert s.two_theta == pytest.approx(e["two_theta"], abs=1e-6)
        if s.n_pixels >= 9:  # whole spot on the detector: the centroid is exact
            assert s.row == pytest.approx(e["row"], abs=0.02)
            assert s.col == pytest.approx(e["col"], abs=0.02)


def test_friedel_mates_are_consistent(point_crystal):
    """h at omega and -h at omega + 180° diffract at the same energy and 2θ, with the spot
    mirrored through the beam centre row (a rotation of 180° about z mirrors G in z)."""
    sim = point_crystal
    rc = sim.geometry.center[0]
    checked = 0
    for omega in (-150.0, -90.0, -20.0, 10.0):
        a = sim.project(omega).spots
        b = sim.project(omega + 180.0).spots
        # never both members of a Friedel pair in one projection
        for table in (a, b):
            hkls = {(r.h, r.k, r.l) for r in table.itertuples()}
            assert not any((-h, -k, -l) in hkls for (h, k, l) in hkls)
        mates = {(-r.h, -r.k, -r.l): r for r in b.itertuples()}
        for r in a.itertuples():
            m = mates.get((r.h, r.k, r.l))
            if m is None or min(r.n_pixels, m.n_pixels) < 9:
                continue  # the mate is clipped by the detector edge or the beam stop
            assert m.energy_kev == pytest.approx(r.energy_kev, rel=1e-9)
            assert m.two_theta == pytest.approx(r.two_theta, abs=1e-9)
            assert m.col == pytest.approx(r.col, abs=0.02)
            assert m.row - rc == pytest.approx(rc - r.row, abs=0.02)
            checked += 1
    assert checked >= 5


def _spot_widths(projection, geometry, hkl):
    """RMS widths of the spot of ``hkl`` along and across the direction to the direct beam."""
    spot = projection.spots.set_index(["h", "k", "l"]).loc[hkl]
    rr, cc = np.nonzero(projection.labels == spot.spot_id)
    w = projection.clean[rr, cc].astype(float)
    beam_row, beam_col = geometry.lab_to_pixel(np.array([geometry.lsd, 0.0, 0.0]))
    radial = np.array([spot.row - beam_row, spot.col - beam_col])
    radial /= np.linalg.norm(radial)
    tangential = np.array([-radial[1], radial[0]])
    d = np.stack([rr - spot.row, cc - spot.col], axis=1)
    width = lambda axis: np.sqrt(np.sum(w * (d @ axis) ** 2) / w.sum())  # noqa: E731
    return width(radial), width(tangential)


def test_laue_focusing_narrows_spots_radially_and_fades_with_distance():
    """A 30 µm cube: at Lss = Lsd its spot is >= 3x narrower radially than tangentially, and
    the ratio moves toward 1 as the detector moves away (docs/physics.md §3)."""
    cube = single_crystal_sample(ORIENTATION, "Al", size=0.030, voxel_size=0.002)
    no_beamstop = (0, -1, 0, -1)
    near = Geometry(n_projections=1, beamstop=no_beamstop)
    spots = Simulator(cube, near, blur_sigma=0.0, absorption=False).project(0.0).spots
    spot = spots.iloc[(spots.two_theta - 15.0).abs().argmin()]
    hkl = (spot.h, spot.k, spot.l)
    two_theta, eta = np.deg2rad(spot.two_theta), np.deg2rad(spot.eta)
    k_out = np.array([np.cos(two_theta), -np.sin(two_theta) * np.sin(eta),
                      np.sin(two_theta) * np.cos(eta)])
    ratios = []
    for lsd in (11.0, 30.0, 60.0):
        # centre the detector on the spot so that it stays in view as Lsd grows
        offset = (k_out[1] * lsd / k_out[0], k_out[2] * lsd / k_out[0])
        geometry = Geometry(lsd=lsd, offset=offset, n_projections=1, beamstop=no_beamstop,
                            detector_shape=(512, 512))
        projection = Simulator(cube, geometry, blur_sigma=0.0, absorption=False).project(0.0)
        radial, tangential = _spot_widths(projection, geometry, hkl)
        ratios.append(tangential / radial)
    assert ratios[0] >= 3.0, ratios
    assert ratios[0] > ratios[1] > ratios[2] >= 0.5, ratios
    assert abs(ratios[2] - 1) < abs(ratios[1] - 1) < abs(ratios[0] - 1), ratios


def test_orientations_are_uniform_on_so3():
    """Misorientation angles from the identity follow the Haar density (1 - cos w)/pi."""
    u = random_orientations(4000, seed=7)
    angle = np.arccos(np.clip((np.trace(u, axis1=1, axis2=2) - 1) / 2, -1, 1))
    haar_cdf = lambda w: (w - np.sin(w)) / np.pi  # noqa: E731
    assert stats.kstest(angle, haar_cdf).pvalue > 0.01
    # the MATLAB model's Euler sampling (360u, 180u, 360u) fails the same test
    rng = np.random.default_rng(7)
    euler = np.column_stack([360 * rng.random(4000), 180 * rng.random(4000),
                             360 * rng.random(4000)])
    v = Rotation.from_euler("ZXZ", euler, degrees=True).as_matrix()
    angle_v = np.arccos(np.clip((np.trace(v, axis1=1, axis2=2) - 1) / 2, -1, 1))
    assert stats.kstest(angle_v, haar_cdf).pvalue < 1e-3


def test_sample_orientations_come_from_the_uniform_sampler():
    spec = SampleSpec("Al", 0.1, 0.15, n_grains=230)
    sample = make_sample(spec, seed=3)
    u = sample.orientations[1:]
    assert np.allclose(u @ np.transpose(u, (0, 2, 1)), np.eye(3), atol=1e-9)
    assert np.allclose(np.linalg.det(u), 1.0)
    assert sample.n_grains == 230
    assert (sample.grains.n_voxels > 0).all()


def test_same_seed_same_frames_and_other_seed_other_frames():
    spec = SampleSpec("Al", 0.1, 0.15, n_grains=40, voxel_size=0.005)
    geometry = Geometry(n_projections=1)
    a = Simulator(make_sample(spec, seed=5), geometry).project(12.0)
    b = Simulator(make_sample(spec, seed=5), geometry).project(12.0)
    c = Simulator(make_sample(spec, seed=6), geometry).project(12.0)
    assert np.array_equal(a.frame, b.frame)
    assert np.array_equal(a.labels, b.labels)
    assert a.spots.equals(b.spots)
    assert not np.array_equal(a.frame, c.frame)


def test_frame_layout_background_and_beamstop():
    spec = SampleSpec("Al", 0.1, 0.15, n_grains=40, voxel_size=0.005)
    geometry = Geometry(n_projections=1)
    p = Simulator(make_sample(spec, seed=5), geometry).project(0.0)
    bs = geometry.beamstop_mask()
    assert p.frame.dtype == np.uint16 and p.frame.shape == geometry.detector_shape
    assert p.clean.dtype == np.float32 and p.labels.dtype == np.int32
    assert (p.frame[bs] == 0).all() and (p.labels[bs] == 0).all()
    assert np.median(p.frame[~bs]) == 919
    assert p.labels.max() == len(p.spots)
    counts = np.bincount(p.labels.ravel(), minlength=len(p.spots) + 1)[1:]
    assert np.array_equal(counts, p.spots.n_pixels.to_numpy())
    # every labelled pixel is above background
    assert (p.clean[p.labels > 0] > 0).all()


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: Geometry(lss=0.0), "lss"),
        (lambda: Geometry(lsd=-3.0), "lsd"),
        (lambda: Geometry(n_projections=0), "n_projections"),
        (lambda: Geometry(detector_shape=(400, 400)), "beam stop"),
        (lambda: SampleSpec("Al", 0.1, 0.15, n_grains=None, mean_grain_size=0.2),
         "mean_grain_size"),
        (lambda: SampleSpec("Cu", 0.1, 0.15), "Cu"),
        (lambda: SampleSpec("Al", 0.0, 0.15), "diameter"),
        (lambda: SampleSpec("Al", 0.1, 0.15, size_spread=-0.1), "size_spread"),
    ],
)
def test_bad_input_names_the_parameter(build, name):
    with pytest.raises(ValueError, match=name):
        build()


def test_crystal_families_and_multiplicities():
    assert MATERIALS["Al"].reflections.multiplicities().tolist() == [8, 6, 12, 24]
    assert MATERIALS["Al"].reflections.family_n2.tolist() == [3, 4, 8, 11]
    assert MATERIALS["Fe"].reflections.multiplicities().tolist() == [12, 6, 24, 12]
    assert MATERIALS["Fe"].reflections.family_n2.tolist() == [2, 4, 6, 8]
    # |F|^2 = (4 f)^2 for fcc with f from the Cromer-Mann sum at s = |G|/4π, Debye-Waller 0.01
    refl = MATERIALS["Al"].reflections
    s = np.sqrt(3) / (2 * 4.04958)
    f = (6.4202 * np.exp(-3.0387 * s**2) + 1.9002 * np.exp(-0.7426 * s**2)
         + 1.5936 * np.exp(-31.5472 * s**2) + 1.9646 * np.exp(-85.0886 * s**2) + 1.1151)
    assert refl.f_squared[0] == pytest.approx(16 * f**2 * np.exp(-16 * np.pi**2 * 0.01 * s**2))


def test_cell_tree_assigns_points_to_their_laguerre_cell():
    """The lifted KD-tree equals brute-force argmin |x - s|² - w (and Voronoi without w)."""
    rng = np.random.default_rng(3)
    seeds, points = rng.random((40, 3)), rng.random((500, 3))
    weights = 0.05 * rng.random(40)
    power = ((points[:, None] - seeds[None]) ** 2).sum(-1) - weights[None]
    _, nearest = cell_tree(seeds, weights).query(np.column_stack([points, np.zeros(500)]))
    np.testing.assert_array_equal(nearest, power.argmin(1))
    _, nearest = cell_tree(seeds).query(points)
    np.testing.assert_array_equal(nearest, (power + weights[None]).argmin(1))


@pytest.mark.parametrize("spread", [0.0, 0.3])
def test_size_spread_sets_the_spread_of_grain_diameters(spread):
    spec = SampleSpec("Al", 0.1, 0.15, n_grains=230, size_spread=spread)
    sample = make_sample(spec, seed=4)
    diameter = sample.grains.diameter
    cv = diameter.std() / diameter.mean()
    if spread == 0:
        assert cv < 0.15  # Voronoi cells with a hard core are nearly uniform
    else:
        assert abs(cv - spread) < 0.06
    assert sample.n_grains == 230  # no empty cell at this spread
    assert abs(diameter.mean() / spec.typical_grain_size - 1) < 0.15
    inside = sample.grain_ids > 0
    assert set(np.unique(sample.grain_ids[inside])) == set(range(1, 231))
