"""The simulated LabDCT instrument: frames, noise model, HDF5 stream and asset documents."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from event_model import DocumentNames, schema_validators

from labdct_live.acquisition.detector import (
    HDF5_COMPLETE,
    HDF5_DATASET,
    DetectorError,
    LabDCTDetector,
    _SparseProjection,
    make_rotation_stage,
    scaled_geometry,
)
from labdct_live.simulation.geometry import Geometry
from labdct_live.simulation.presets import preset

SHAPE = (256, 256)


def make_detector(simulator, **kwargs):
    kwargs.setdefault("mode", "embedded")
    kwargs.setdefault("seed", 7)
    return LabDCTDetector(simulator=simulator, rotation=make_rotation_stage(), **kwargs)


# ------------------------------------------------------------------------------ geometry
def test_scaled_geometry_keeps_the_field_of_view():
    paper = Geometry()
    small = scaled_geometry(paper, SHAPE)
    assert small.detector_shape == SHAPE
    assert small.pixel_size == pytest.approx(paper.pixel_size * 2032 / 256)
    assert small.center == (127.5, 127.5)
    # the geometry's own derivation of the paper's shadow at this pixel size agrees
    assert small.beamstop == Geometry(detector_shape=SHAPE, pixel_size=small.pixel_size).beamstop


def test_scaled_geometry_rescales_an_explicit_beamstop():
    _, fe = preset("Fe-exp")
    small = scaled_geometry(fe, (508, 508))  # factor 4
    r0, r1, c0, c1 = fe.beamstop
    s0, s1, t0, t1 = small.beamstop
    assert (s0, t0) == (r0 // 4, c0 // 4)
    assert (s1 + 1) * 4 >= r1 + 1 > s1 * 4 and (t1 + 1) * 4 >= c1 + 1 > t1 * 4
    with pytest.raises(DetectorError, match="aspect ratio"):
        scaled_geometry(fe, (508, 254))


# ------------------------------------------------------------------------------ describe
def test_describe_stream_and_embedded(simulator, tmp_path):
    stream = make_detector(simulator, mode="stream", write_dir=tmp_path)
    key = stream.describe()["labdct_image"]
    assert key["dtype_numpy"] == "<u2" and key["shape"] == list(SHAPE)
    assert key["external"] == "STREAM:"
    assert stream.describe()["labdct_exposure"]["units"] == "s"
    embedded = make_detector(simulator)
    key = embedded.describe()["labdct_image"]
    assert "external" not in key and key["dtype_numpy"] == "<u2"
    assert set(stream.read_configuration()) == {
        "labdct_reference_exposure", "labdct_background_rate", "labdct_dark_offset"}


def test_invalid_settings_are_refused(simulator, tmp_path):
    with pytest.raises(DetectorError, match="write_dir"):
        make_detector(simulator, mode="stream")
    with pytest.raises(DetectorError, match="mode"):
        make_detector(simulator, mode="file")
    with pytest.raises(DetectorError, match="background"):
        make_detector(simulator, background=np.ones((10, 10)))
    det = make_detector(simulator)
    with pytest.raises(DetectorError, match="exposure"):
        det.exposure.put(-1.0)


# ------------------------------------------------------------------------------ frames
def test_frames_are_deterministic_uint16_with_a_dark_beamstop(simulator):
    det = make_detector(simulator)
    a, truth = det.simulate_frame(10.0, 1.0, frame_index=3)
    b, _ = det.simulate_frame(10.0, 1.0, frame_index=3)
    c, _ = det.simulate_frame(10.0, 1.0, frame_index=4)
    assert a.dtype == np.uint16 and a.shape == SHAPE
    np.testing.assert_array_equal(a, b)
    assert np.count_nonzero(a != c) > 0.5 * a.size
    beamstop = simulator.geometry.beamstop_mask()
    assert beamstop.any() and not a[beamstop].any()
    assert (truth.labels > 0).sum() > 50  # the frame has spots


def test_noise_and_signal_scale_with_exposure(simulator):
    """Spot means above background grow as exposure, noise SD as its square root."""
    det = make_detector(simulator, reference_exposure=2.0, dark_offset=100.0)
    usable = ~simulator.geometry.beamstop_mask()
    stats = {}
    for i, exposure in enumerate((1.0, 4.0)):
        frame, truth = det.simulate_frame(0.0, exposure, frame_index=i)
        expected = det.expected_counts(truth.clean, exposure)
        residual = frame.astype(np.float64) - 100.0 - expected
        background = usable & (truth.labels == 0) & (truth.clean == 0)
        spot = usable & (truth.labels > 0)
        # Poisson: the residual's variance equals the mean count, pixel by pixel
        dispersion = residual[background].var() / expected[background].mean()
        assert dispersion == pytest.approx(1, abs=0.03)
        assert abs(residual[usable].mean()) < 4 * np.sqrt(expected[usable].mean() / usable.sum())
        bg_only = det.expected_counts(np.zeros(SHAPE, np.float32), exposure)
        stats[exposure] = (
            (frame[spot] - 100.0 - bg_only[spot]).mean(),  # mean spot counts above background
            residual[background].std(),
            np.sqrt(expected[spot].mean() / spot.sum()),  # standard error of that mean
        )
        # the scale: at half the reference exposure the spots are half the clean image
        assert stats[exposure][0] == pytest.approx(exposure / 2 * truth.clean[spot].mean(),
                                                   abs=4 * stats[exposure][2])
    (s1, sd1, se1), (s4, sd4, se4) = stats[1.0], stats[4.0]
    assert s4 / s1 == pytest.approx(4, abs=4 * (se4 / s1 + 4 * se1 / s1))
    assert sd4 / sd1 == pytest.approx(2, rel=0.02)


def test_given_background_image_is_used(simulator):
    flat = np.full(SHAPE, 0.5, np.float32)
    det = make_detector(simulator, background=flat, background_rate=400.0)
    expected = det.expected_counts(np.zeros(SHAPE, np.float32), 3.0)
    np.testing.assert_allclose(expected, 600.0)


def test_clean_projections_are_cached(simulator):
    size = {w: _SparseProjection.from_projection(simulator.project(w)).nbytes
            for w in (4.0, 6.0, 8.0)}
    # room for the frames at 6 and 8 degrees, not for all three
    det = make_detector(simulator, cache_mb=(size[6.0] + size[8.0] + size[4.0] / 2) / 1e6)
    calls = []
    original = simulator.project

    def counting(omega):
        calls.append(omega)
        return original(omega)

    simulator.project = counting
    try:
        first = det.projection(4.0)
        again = det.projection(4.0)
        det.projection(6.0)
        det.projection(8.0)  # evicts 4.0 (least recently used)
        det.projection(6.0)
        det.projection(4.0)
    finally:
        del simulator.project
    assert calls == [4.0, 6.0, 8.0, 4.0]
    np.testing.assert_array_equal(first.frame, again.frame)
    np.testing.assert_array_equal(first.clean, again.clean)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert first.spots.equals(again.spots)
    uncached = make_detector(simulator, cache_mb=0)
    calls.clear()
    simulator.project = counting
    try:
        uncached.projection(4.0)
        uncached.projection(4.0)
    finally:
        del simulator.project
    assert calls == [4.0, 4.0]


# ------------------------------------------------------------------------------ stream
def test_trigger_uses_the_rotation_position_and_embeds_the_frame(simulator):
    det = make_detector(simulator)
    det.rotation.set(12.0).wait()
    det.stage()
    try:
        det.trigger().wait(timeout=30)
    finally:
        det.unstage()
    expected, _ = det.simulate_frame(12.0, 1.0, frame_index=0)
    reading = det.read()
    np.testing.assert_array_equal(reading["labdct_image"]["value"], expected)
    assert reading["labdct_exposure"]["value"] == 1.0
    assert det.last_projection.omega == 12.0


def test_stream_mode_writes_hdf5_and_announces_frames(simulator, tmp_path):
    det = make_detector(simulator, mode="stream", write_dir=tmp_path)
    det.stage()
    docs = []
    try:
        det.trigger().wait(timeout=30)
        docs += list(det.collect_asset_docs())
        det.trigger().wait(timeout=30)  # taken twice (a rewind): only the newest is announced
        det.trigger().wait(timeout=30)
        docs += list(det.collect_asset_docs())
        assert list(det.collect_asset_docs()) == []  # nothing new
        assert det.get_index() == 3
        with h5py.File(det.last_file, "r", swmr=True) as f:  # readable while being written
            assert f[HDF5_DATASET].shape == (3, *SHAPE) and f[HDF5_COMPLETE][()] == 0
    finally:
        det.unstage()
    names = [name for name, _ in docs]
    assert names == ["stream_resource", "stream_datum", "stream_datum"]
    resource = docs[0][1]
    assert resource["data_key"] == "labdct_image"
    assert resource["mimetype"] == "application/x-hdf5"
    assert resource["uri"] == f"file://localhost{det.last_file}"
    assert resource["parameters"]["dataset"] == HDF5_DATASET
    assert resource["parameters"]["chunk_shape"] == [1, *SHAPE]
    assert [d["indices"] for _, d in docs[1:]] == [{"start": 0, "stop": 1},
                                                   {"start": 2, "stop": 3}]
    for name, doc in docs:
        assert doc["stream_resource" if name == "stream_datum" else "uid"] == resource["uid"]
        schema_validators[DocumentNames[name]].validate(doc)
    with h5py.File(det.last_file, "r") as f:
        data = f[HDF5_DATASET]
        assert data.dtype == np.uint16 and data.chunks == (1, *SHAPE)
        assert f[HDF5_COMPLETE][()] == 1
        for i in range(3):
            np.testing.assert_array_equal(data[i], det.simulate_frame(0.0, 1.0, i)[0])


def test_collect_asset_docs_up_to_an_index(simulator, tmp_path):
    det = make_detector(simulator, mode="stream", write_dir=tmp_path)
    det.stage()
    try:
        for _ in range(3):
            det.trigger().wait(timeout=30)
        docs = list(det.collect_asset_docs(index=2))
        more = list(det.collect_asset_docs(index=5))
    finally:
        det.unstage()
    assert [d["indices"] for name, d in docs if name == "stream_datum"] == [{"start": 0, "stop": 2}]
    assert [d["indices"] for _, d in more] == [{"start": 2, "stop": 3}]
