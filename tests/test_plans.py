"""LabDCT plans with the real RunEngine, real ophyd devices and a real tiled catalog."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from event_model import DocumentNames, schema_validators

from labdct_live.acquisition.detector import HDF5_DATASET, LabDCTDetector, make_rotation_stage
from labdct_live.acquisition.plans import (
    PlanError,
    adaptive_exposure_scan,
    labdct_scan,
    next_exposure,
    scan_omegas,
)
from labdct_live.segmentation.snr import exposure_for_snr, snr_summary, spot_snr

SHAPE = (256, 256)


def make_detector(simulator, **kwargs):
    kwargs.setdefault("seed", 5)
    return LabDCTDetector(simulator=simulator, rotation=make_rotation_stage(), **kwargs)


def run_and_collect(plan):
    """Run a plan on a fresh RunEngine; return (uid, [(name, doc), ...])."""
    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    (uid,) = RE(plan)
    return uid, docs


def of(docs, name):
    return [doc for n, doc in docs if n == name]


# ------------------------------------------------------------------------------ helpers
def test_scan_omegas():
    np.testing.assert_allclose(scan_omegas(-180, 180, 2), -180 + 2 * np.arange(181))
    np.testing.assert_allclose(scan_omegas(10, 0, -2.5), [10, 7.5, 5, 2.5, 0])
    np.testing.assert_allclose(scan_omegas(0, 0.3, 0.1), [0, 0.1, 0.2, 0.3])  # round-off
    with pytest.raises(PlanError, match="step"):
        scan_omegas(0, 10, 0)
    with pytest.raises(PlanError, match="sign"):
        scan_omegas(0, 10, -1)


def test_next_exposure():
    # undamped: t (target / snr)^2; damped: geometric mean with the current exposure
    assert next_exposure(2.0, 3.0, 6.0, 0.1, 100, damping=1.0) == pytest.approx(8.0)
    assert next_exposure(2.0, 3.0, 6.0, 0.1, 100, damping=0.5) == pytest.approx(4.0)
    assert next_exposure(2.0, 12.0, 6.0, 0.1, 100, damping=1.0) == pytest.approx(0.5)
    assert next_exposure(2.0, 3.0, 6.0, 0.1, 5.0, damping=1.0) == 5.0  # clipped
    assert next_exposure(2.0, 0.5, 6.0, 0.1, 100, damping=1.0, max_factor=4) == 8.0
    assert next_exposure(2.0, None, 6.0, 0.1, 100) == 2.0
    assert next_exposure(2.0, float("nan"), 6.0, 0.1, 100) == 2.0
    assert next_exposure(2.0, -1.0, 6.0, 0.1, 100, damping=0.5, max_factor=4) == 4.0
    with pytest.raises(PlanError, match="damping"):
        next_exposure(2.0, 3.0, 6.0, 0.1, 100, damping=0)


def test_plan_arguments_are_checked_before_running(simulator, tmp_path):
    det = make_detector(simulator, mode="embedded")
    with pytest.raises(PlanError, match="exposure"):
        labdct_scan(det, det.rotation, 0, 4, 2, exposure=0)
    with pytest.raises(PlanError, match="snr_source"):
        adaptive_exposure_scan(det, det.rotation, 3.0, target_snr=5)
    with pytest.raises(PlanError, match="min_exposure"):
        adaptive_exposure_scan(det, det.rotation, lambda: None, 5, exposure=1.0,
                               min_exposure=2.0, max_exposure=4.0)


# ------------------------------------------------------------------------------ scans
def test_labdct_scan_stream_mode(simulator, tmp_path):
    det = make_detector(simulator, write_dir=tmp_path / "frames")
    omegas = [0.0, 2.0, 4.0, 6.0, 8.0]
    uid, docs = run_and_collect(labdct_scan(det, det.rotation, 0, 8, 2, exposure=1.5,
                                            md={"operator": "test"}))
    for name, doc in docs:  # every document is valid event-model
        schema_validators[DocumentNames[name]].validate(doc)
    (start,) = of(docs, "start")
    assert start["uid"] == uid and start["plan_name"] == "labdct_scan"
    assert start["omegas"] == omegas and start["n_projections"] == 5
    assert start["exposure"] == 1.5 and start["operator"] == "test"
    assert start["detector"] == "labdct" and start["image_key"] == "labdct_image"
    assert start["geometry"] == simulator.geometry.with_(
        omega_start=0.0, omega_step=2.0, n_projections=5).to_dict()
    assert start["sample"]["spec"]["n_grains"] == 8 and start["sample"]["seed"] == 1

    (descriptor,) = of(docs, "descriptor")
    assert descriptor["data_keys"]["labdct_image"]["external"] == "STREAM:"
    events = of(docs, "event")
    assert [e["data"]["rotation"] for e in events] == omegas
    assert [e["data"]["labdct_exposure"] for e in events] == [1.5] * 5
    assert all("labdct_image" not in e["data"] for e in events)

    (resource,) = of(docs, "stream_resource")
    assert resource["run_start"] == uid
    datums = of(docs, "stream_datum")
    assert [d["indices"] for d in datums] == [{"start": i, "stop": i + 1} for i in range(5)]
    assert [d["seq_nums"] for d in datums] == [
        {"start": e["seq_num"], "stop": e["seq_num"] + 1} for e in events]
    assert all(d["descriptor"] == descriptor["uid"] for d in datums)
    # each datum arrives before the event it belongs to
    names = [n for n, _ in docs]
    assert all(names[i + 1] == "event" for i, n in enumerate(names) if n == "stream_datum")

    with h5py.File(det.last_file, "r") as f:
        frames = f[HDF5_DATASET][:]
    assert frames.shape == (5, *SHAPE) and frames.dtype == np.uint16
    for i, omega in enumerate(omegas):
        np.testing.assert_array_equal(frames[i], det.simulate_frame(omega, 1.5, i)[0])


def test_labdct_scan_embedded_mode(simulator):
    det = make_detector(simulator, mode="embedded")
    _, docs = run_and_collect(labdct_scan(det, det.rotation, 10, 4, -3, exposure=2.0))
    events = of(docs, "event")
    assert [e["data"]["rotation"] for e in events] == [10.0, 7.0, 4.0]
    assert not of(docs, "stream_resource") and not of(docs, "stream_datum")
    for i, event in enumerate(events):
        image = np.asarray(event["data"]["labdct_image"])
        assert image.dtype == np.uint16
        np.testing.assert_array_equal(image, det.simulate_frame(10.0 - 3 * i, 2.0, i)[0])


# ------------------------------------------------------------------------------ adaptive
def test_adaptive_scan_follows_the_sqrt_law(simulator):
    """With SNR = k sqrt(t) the exposures are the damped iteration toward (target / k)^2."""
    det = make_detector(simulator, mode="embedded")
    k, target = 2.0, 8.0  # ideal exposure 16 s

    def snr_source():
        return k * np.sqrt(det.exposure.get())

    _, docs = run_and_collect(adaptive_exposure_scan(
        det, det.rotation, snr_source, target, 0, 22, 2, exposure=1.0, max_exposure=100))
    recorded = [e["data"]["labdct_exposure"] for e in of(docs, "event")]
    expected = [1.0]
    for _ in range(11):
        t = expected[-1]
        step = min(exposure_for_snr(t, k * np.sqrt(t), target) / t, 4.0) ** 0.5
        expected.append(t * step)
    np.testing.assert_allclose(recorded, expected)
    assert recorded[-1] == pytest.approx(16.0, rel=0.01)
    assert of(docs, "start")[0]["target_snr"] == target


def flat_field_snr(det):
    """Mean spot SNR of the detector's last frame after removing the known background."""
    exposure = det.exposure.get()
    background = det.expected_counts(np.zeros(SHAPE, np.float32), exposure)
    image = det.image.get().astype(np.float64) - background
    table = spot_snr(image, det.last_projection.labels,
                     exclude=det.geometry.beamstop_mask())
    return snr_summary(table)["mean"]


@pytest.mark.parametrize("exposure, target", [(0.5, 15.0), (40.0, 6.0)])
def test_adaptive_scan_moves_exposure_toward_the_target_snr(simulator, exposure, target):
    det = make_detector(simulator, mode="embedded", reference_exposure=10.0)
    snrs = []

    def snr_source():
        snrs.append(flat_field_snr(det))
        return snrs[-1]

    _, docs = run_and_collect(adaptive_exposure_scan(
        det, det.rotation, snr_source, target, 0, 38, 2, exposure=exposure,
        min_exposure=0.1, max_exposure=200.0))
    recorded = np.array([e["data"]["labdct_exposure"] for e in of(docs, "event")])
    assert len(recorded) == 20 and recorded[0] == exposure
    # the exposure moved in the right direction and the SNR came close to the target
    first, last = np.mean(snrs[:2]), np.mean(snrs[-8:])
    assert abs(last - target) < 0.25 * target < abs(first - target)
    assert (recorded[-1] > 4 * exposure) if first < target else (recorded[-1] < exposure / 4)


def test_adaptive_scan_survives_a_failing_snr_source(simulator):
    det = make_detector(simulator, mode="embedded")

    def broken():
        raise RuntimeError("monitor down")

    _, docs = run_and_collect(adaptive_exposure_scan(det, det.rotation, broken, 5, 0, 4, 2,
                                                     exposure=1.0))
    assert [e["data"]["labdct_exposure"] for e in of(docs, "event")] == [1.0, 1.0, 1.0]
    assert of(docs, "stop")[0]["exit_status"] == "success"


# ------------------------------------------------------------------------------ tiled
READ_WITH_PLAIN_TILED = textwrap.dedent("""
    import json, sys
    import numpy as np
    from tiled.client import from_uri
    uri, uid, key, out = sys.argv[1:]
    run = from_uri(uri)[uid]
    frames = run["primary"][key].read()
    np.save(out, frames)
    print(json.dumps({
        "exposure": run["primary"]["labdct_exposure"].read().tolist(),
        "start": dict(run.metadata["start"]),
        "labdct_modules": [m for m in sys.modules if m.startswith("labdct_live")],
    }))
""")


def test_tiled_writer_round_trip(simulator, tmp_path):
    """TiledWriter stores the run; a plain tiled client in another process reads uint16 frames."""
    from bluesky_tiled_plugins import TiledWriter
    from tiled.client import from_uri
    from tiled.server import SimpleTiledServer

    frames_dir = tmp_path / "frames"
    det = make_detector(simulator, write_dir=frames_dir)
    with SimpleTiledServer(tmp_path / "catalog", readable_storage=[frames_dir]) as server:
        RE = RunEngine({})
        RE.subscribe(TiledWriter(from_uri(server.uri), batch_size=1))
        (uid,) = RE(labdct_scan(det, det.rotation, 0, 6, 2, exposure=2.0))
        out = tmp_path / "frames.npy"
        result = subprocess.run(
            [sys.executable, "-c", READ_WITH_PLAIN_TILED, server.uri, uid, "labdct_image",
             str(out)], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["labdct_modules"] == []
    frames = np.load(out)
    assert frames.dtype == np.uint16 and frames.shape == (4, *SHAPE)
    with h5py.File(det.last_file, "r") as f:
        np.testing.assert_array_equal(frames, f[HDF5_DATASET][:])
    assert report["exposure"] == [2.0] * 4
    assert report["start"]["omegas"] == [0.0, 2.0, 4.0, 6.0]
    assert report["start"]["geometry"]["detector_shape"] == list(SHAPE)
