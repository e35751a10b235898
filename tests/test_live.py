"""Live processing against the real RunEngine, a real tiled server and real 0MQ sockets."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from processes import end_processes

from labdct_live.acquisition.plans import adaptive_exposure_scan, labdct_scan
from labdct_live.callbacks.live import LiveConfig, live_router
from labdct_live.catalog.server import CatalogServer
from labdct_live.live.replay import replay_run
from labdct_live.live.session import LiveSession
from labdct_live.methods import RoutineMethod
from labdct_live.segmentation.routine import RoutineParams

SHAPE = (256, 256)
PARAMS = RoutineParams(window=5, sigma=1.0, min_size=3)
OPTIONS = {"routine_params": PARAMS}
STEP = 30.0  # 13 frames from -180 to 180
N = 13


def _session(tmp_path, **kw) -> LiveSession:
    return LiveSession(tmp_path / "work", method="routine", method_options=OPTIONS,
                       export_formats=(), **kw)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """One session with one stream-mode scan of N frames, processed live."""
    session = _session(tmp_path_factory.mktemp("live")).open()
    detector, rotation = session.simulated_instrument("D18", detector_shape=SHAPE, seed=2)
    (uid,) = session.RE(labdct_scan(detector, rotation, step=STEP, exposure=2.0))
    assert session.wait(120)
    yield session, uid, detector
    session.close()


def test_scan_yields_n_binary_frames_and_rows_readable_by_plain_tiled(scanned):
    session, uid, _ = scanned
    processor = session.processors[0]
    assert processor.counts["received"] == processor.counts["processed"] == N
    assert processor.counts["failed"] == 0 and not processor.errors
    script = textwrap.dedent(f"""
        import json, sys
        from tiled.client import from_uri
        c = from_uri({session.catalog_uri!r}, api_key={session.api_key!r})
        node = c["processed"][{uid!r}]
        binary = node["binary"].read()
        frames = node["frames"].read()
        spots = node["spots"].read()
        raw = c[{uid!r}]["primary"]["labdct_image"].read()
        print(json.dumps({{"binary": list(binary.shape), "dtype": str(binary.dtype),
                          "rows": sorted(frames["frame"].tolist()),
                          "status": node.metadata["status"], "raw": list(raw.shape),
                          "spots": len(spots), "n_spots": int(frames["n_spots"].sum()),
                          "labdct_imported": "labdct_live" in sys.modules}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True, cwd="/")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["binary"] == [N, *SHAPE] and got["dtype"] == "uint8"
    assert got["rows"] == list(range(N))
    assert got["raw"] == [N, *SHAPE]
    assert got["status"] == "complete"
    assert got["spots"] == got["n_spots"] > 0
    assert got["labdct_imported"] is False


def test_catalog_holds_what_offline_processing_gives(scanned):
    """The live results equal the same method run offline on the raw frames from tiled."""
    session, uid, detector = scanned
    raw = session.client[uid]["primary"]["labdct_image"].read()
    method = RoutineMethod(PARAMS, detector.geometry.beamstop_mask())
    offline = {}
    for i, frame in enumerate(raw):
        offline.update({r.index: r for r in method.push(i, frame)})
    offline.update({r.index: r for r in method.finish()})
    node = session.client["processed"][uid]
    binary = node["binary"].read()
    frames = node["frames"].read().set_index("frame")
    for i in range(N):
        assert np.array_equal(binary[i], offline[i].binary), i
        assert frames.at[i, "n_spots"] == len(offline[i].spots)
    assert np.allclose(frames.sort_index()["omega"], np.arange(-180, 181, STEP))


def test_replay_reproduces_the_binary_frames(scanned):
    session, uid, _ = scanned
    result = replay_run(session.client, uid, method="routine", method_options=OPTIONS,
                        progress=False)
    assert result.processor.counts["processed"] == N
    assert len(result.agreement) == N
    assert result.agreement.identical.all()
    assert result.summary()["mean_iou"] == 1.0
    node = session.client["processed"][result.node_key]
    assert node.metadata["replay_of"] == uid
    assert np.array_equal(node["binary"].read(), session.client["processed"][uid]["binary"].read())


def test_bad_frames_are_logged_counted_and_the_scan_continues(tmp_path, caplog):
    """Frames corrupted between detector and callback: a wrong shape and NaNs."""
    from bluesky import RunEngine

    with CatalogServer(tmp_path / "catalog") as server:
        session = LiveSession(tmp_path / "acq", catalog_uri=server.uri, api_key=server.api_key)
        detector, rotation = session.simulated_instrument("D18", detector_shape=SHAPE,
                                                          mode="embedded", seed=3)
        processors = []
        router = live_router(LiveConfig(client=server.client(), method="routine",
                                        method_options=OPTIONS), processors)

        def corrupt(name, doc):
            if name == "event" and doc["seq_num"] in (4, 7):
                doc = {**doc, "data": dict(doc["data"])}
                image = np.asarray(doc["data"]["labdct_image"])
                doc["data"]["labdct_image"] = (image[:, :100] if doc["seq_num"] == 4
                                               else np.full(image.shape, np.nan))
            router(name, doc)

        RE = RunEngine({})
        RE.subscribe(corrupt)
        (uid,) = RE(labdct_scan(detector, rotation, step=STEP, exposure=2.0))
        processor = processors[0]
        assert processor.wait(120)
        assert processor.counts["failed"] == 2 and processor.counts["processed"] == N - 2
        frames = server.client()["processed"][uid]["frames"].read().set_index("frame")
        assert sorted(frames.index) == list(range(N))
        bad = frames[frames.status != "ok"]
        assert sorted(bad.index) == [3, 6]
        assert bad.status.str.startswith("error").all()
        assert "not processed" in caplog.text


def test_backlog_beyond_the_queue_is_spooled_and_nothing_lost(tmp_path):
    with _session(tmp_path, queue_size=1) as session:
        detector, rotation = session.simulated_instrument("D18", detector_shape=SHAPE,
                                                          mode="embedded", seed=4)
        push = RoutineMethod.push
        scan_over = threading.Event()

        def held_push(self, index, frame):
            scan_over.wait(120)  # processing stalls until the scan is over: frames pile up
            return push(self, index, frame)

        RoutineMethod.push = held_push
        try:
            (uid,) = session.RE(labdct_scan(detector, rotation, step=STEP, exposure=2.0))
            scan_over.set()
            assert session.wait(120)
        finally:
            scan_over.set()
            RoutineMethod.push = push
        processor = session.processors[0]
        assert processor.counts["spooled_inbox"] > 0
        assert processor.counts["max_queue_depth"] > 1
        assert processor.counts["processed"] == N
        assert sorted(session.client["processed"][uid]["frames"].read().frame) == list(range(N))
        assert not list((session.workdir / "spool").rglob("in_*.npz"))


# without tiled's retries (our spools bridge the outage) in CI; with them, the slow set
@pytest.mark.parametrize("client_retries", [pytest.param(True, marks=pytest.mark.slow), False],
                         ids=["tiled-retries", "no-retries"])
def test_catalog_stopped_mid_scan_and_restarted_loses_nothing(tmp_path, monkeypatch,
                                                              client_retries):
    """With tiled's own retries (up to 45 s) the client bridges a short outage; without them
    our spools must: results to disk and back, raw documents held and re-sent."""
    if not client_retries:
        import tiled.client.utils

        monkeypatch.setattr(tiled.client.utils, "TILED_RETRY_ATTEMPTS", 1)
    with _session(tmp_path) as session:
        detector, rotation = session.simulated_instrument("D18", detector_shape=SHAPE, seed=5)
        server = session.server

        def outage(name, doc):
            """Short outage mid-scan; without client retries a longer one spanning the stop
            document, when TiledWriter writes the batched event rows."""
            if name != "event":
                return
            if client_retries and doc["seq_num"] == 3:
                server.stop()
            elif client_retries and doc["seq_num"] == 8:
                server.start()
            elif not client_retries and doc["seq_num"] == 10:
                server.stop()
                restart.start()

        restart = threading.Timer(4.0, server.start)
        session.RE.subscribe(outage)
        (uid,) = session.RE(labdct_scan(detector, rotation, step=STEP, exposure=2.0))
        if not client_retries:
            restart.join()
        assert session.wait(300)
        processor = session.processors[0]
        if not client_retries:  # the outage really hit our writers
            assert processor.counts["spooled_results"] > 0
            assert session.raw_writer.rewrites > 0
        assert processor.counts["processed"] == N and processor.writer.pending == 0
        node = session.client["processed"][uid]
        assert sorted(node["frames"].read().frame) == list(range(N))
        assert node.metadata["status"] == "complete"
        run = session.client[uid]
        assert run.metadata["stop"]["num_events"]["primary"] == N
        assert run["primary"]["labdct_image"].read().shape == (N, *SHAPE)
        assert not session.raw_writer.failed


def test_pause_during_an_exposure_and_resume_keep_one_frame_per_event(tmp_path, caplog):
    """A pause interrupting an exposure rewinds the step: the frame is taken again. The file
    must hold one frame per event with no gap (bluesky-tiled-plugins' TiledWriter reads the
    raw frames as one contiguous block), and the interrupted frame, finishing late, must
    not overwrite the new one."""
    import logging

    import h5py
    from bluesky.utils import RunEngineInterrupted

    caplog.set_level(logging.INFO, logger="labdct_live.acquisition.detector")
    with _session(tmp_path) as session:
        detector, rotation = session.simulated_instrument("D18", detector_shape=SHAPE, seed=9)
        simulate_frame = detector.simulate_frame
        interrupted = 4  # frame index (counted per trigger) that the pause hits

        def slow_exposure(omega, exposure, frame_index=0):
            if frame_index == interrupted:
                threading.Timer(0.2, session.RE.request_pause, kwargs={"defer": False}).start()
                time.sleep(1.0)  # still exposing when the scan resumes
            return simulate_frame(omega, exposure, frame_index)

        detector.simulate_frame = slow_exposure
        with pytest.raises(RunEngineInterrupted):
            session.RE(labdct_scan(detector, rotation, step=STEP, exposure=2.0))
        (uid,) = session.RE.resume()
        assert session.wait(120)
        assert "frame 4 dropped: its step was taken again" in caplog.text
        with h5py.File(detector.last_file, "r", swmr=True) as f:
            written = f["/entry/data/data"][:]
        assert written.shape == (N, *SHAPE)
        raw = session.client[uid]["primary"]["labdct_image"].read()
        np.testing.assert_array_equal(raw, written)
        frames = session.client["processed"][uid]["frames"].read()
        assert sorted(frames.frame) == list(range(N)) and (frames.status == "ok").all()
        assert session.processors[0].counts["processed"] == N


def test_adaptive_plan_follows_the_live_monitor(tmp_path):
    """The plan takes the monitor's live SNR (lagging behind the scan by the routine's
    window) without stalling, and moves the exposure the way that SNR says.
    Convergence to the target is tested in test_plans.py with an exact SNR source."""
    with _session(tmp_path) as session:
        detector, rotation = session.simulated_instrument("D18", detector_shape=SHAPE,
                                                          mode="embedded", seed=6)
        used = []

        def snr_source():
            # until the routine's window has filled there is no SNR yet: the plan keeps
            # its exposure after a short wait instead of stalling
            used.append((detector.exposure.get(), session.monitor.latest_snr(timeout=1.0)))
            return used[-1][1]

        target = 3.0
        (uid,) = session.RE(adaptive_exposure_scan(
            detector, rotation, snr_source, target_snr=target, start=0, stop=300, step=20,
            exposure=0.5, max_exposure=16.0))
        assert session.wait(120)
        exposures = session.client[uid]["primary"]["labdct_exposure"].read()
        assert len(exposures) == 16
        changes = 0
        for (exposure, snr), following in zip(used, exposures[1:]):
            if snr is None:
                assert following == exposure
            elif following != exposure:
                changes += 1
                assert (following > exposure) == (snr < target)
        assert changes >= 3
        assert len(session.monitor.rows) == 16 and session.monitor.saved is not None


def test_zmq_worker_in_another_process_processes_a_published_scan(tmp_path):
    from bluesky import RunEngine

    from labdct_live.live.remote import make_publisher

    def port():
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    p_in, p_out = port(), port()
    raw = tmp_path / "raw"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with CatalogServer(tmp_path / "catalog", readable_storage=[raw]) as server:
        env["TILED_API_KEY"] = server.api_key
        cli = [sys.executable, "-m", "labdct_live"]
        proxy = subprocess.Popen([*cli, "proxy", "--input", f"127.0.0.1:{p_in}",
                                  "--output", f"127.0.0.1:{p_out}"], env=env,
                                 stdout=subprocess.PIPE, text=True)
        worker = subprocess.Popen([*cli, "worker", "--zmq", f"127.0.0.1:{p_out}", "--catalog",
                                   server.uri, "--method", "routine", "--spool",
                                   str(tmp_path / "spool")], env=env, stdout=subprocess.PIPE,
                                  text=True)
        try:
            for process, banner in ((proxy, "labdct-live proxy"), (worker, "labdct-live worker")):
                ready, _, _ = select.select([process.stdout], [], [], 120)
                assert ready, f"no '{banner}' line within 120 s"
                assert banner in process.stdout.readline()
            session = LiveSession(tmp_path / "acq", catalog_uri=server.uri,
                                  api_key=server.api_key)
            detector, rotation = session.simulated_instrument("D18", detector_shape=SHAPE,
                                                              seed=7)
            detector.write_dir = raw
            RE = RunEngine({})
            publisher = make_publisher(f"127.0.0.1:{p_in}")
            RE.subscribe(publisher)
            # PUB/SUB drops what is sent before the connections and the worker's subscription
            # have reached the proxy: a subscriber that misses `start` cannot route the run
            time.sleep(2.0)
            (uid,) = RE(labdct_scan(detector, rotation, step=STEP, exposure=2.0))
            client = server.client()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if ("processed" in client and uid in client["processed"]
                        and client["processed"][uid].metadata.get("status") == "complete"):
                    break
                time.sleep(0.5)
            node = client["processed"][uid]
            assert node.metadata["status"] == "complete"
            assert sorted(node["frames"].read().frame) == list(range(N))
            assert node["binary"].read().shape == (N, *SHAPE)
            publisher.close()
        finally:
            end_processes(worker, proxy)


def test_a_scan_shorter_than_the_routine_window_is_accounted_for(tmp_path):
    with LiveSession(tmp_path / "work", method="routine", export_formats=()) as session:
        detector, rotation = session.simulated_instrument("D18", detector_shape=SHAPE,
                                                          mode="embedded", seed=8)
        (uid,) = session.RE(labdct_scan(detector, rotation, start=0, stop=20, step=5,
                                        exposure=2.0))
        assert session.wait(120)
        frames = session.client["processed"][uid]["frames"].read()
        assert sorted(frames.frame) == [0, 1, 2, 3, 4]
        assert frames.status.str.contains("window").all()
        assert session.client["processed"][uid].metadata["status"] == "complete-with-errors"


def test_export_from_catalog_writes_the_processed_frames(scanned, tmp_path):
    import tifffile

    from labdct_live.cli import main

    session, uid, _ = scanned
    out = tmp_path / "grainrecon"
    assert main(["export", "--from-catalog", uid, "--catalog", session.catalog_uri,
                 "--api-key", session.api_key, "--format", "grainrecon", "--out", str(out)]) == 0
    binary = session.client["processed"][uid]["binary"].read()
    files = sorted(out.glob("proj*.tif"))
    assert [f.name for f in files] == [f"proj{i:04d}.tif" for i in range(1, N + 1)]
    for i, f in enumerate(files):
        assert np.array_equal(tifffile.imread(f) > 0, binary[i] > 0)
    omegas = np.loadtxt(out / "omega.txt")
    assert np.allclose(omegas, np.arange(-180, 181, STEP))


def test_catalog_spot_rows_have_every_column_and_equal_segments_csv(scanned, tmp_path):
    """Every documented spot column is filled in the catalog and equals ``segment``'s
    ``spots.csv`` for the same frames (the raw frames from tiled, the same beam stop)."""
    import pandas as pd
    import tifffile

    from labdct_live.cli import main
    from labdct_live.segmentation.spot_schema import SPOT_COLUMN_NAMES
    from labdct_live.simulation.scanfolder import FORMAT_NAME

    session, uid, detector = scanned
    live = session.client["processed"][uid]["spots"].read()
    assert list(live.columns) == list(SPOT_COLUMN_NAMES)
    assert len(live) > 0 and not live.isna().any().any()

    scan = tmp_path / "scan"
    (scan / "frames").mkdir(parents=True)
    raw = session.client[uid]["primary"]["labdct_image"].read()
    names = [f"frame_{i:03d}.tif" for i in range(len(raw))]
    for name, frame in zip(names, raw):
        tifffile.imwrite(scan / "frames" / name, frame)
    (scan / "scan.json").write_text(json.dumps({
        "format": FORMAT_NAME, "geometry": detector.geometry.to_dict(),
        "omegas": np.arange(-180, 181, STEP).tolist(), "frames": names}))
    params = tmp_path / "params.json"
    params.write_text(json.dumps(PARAMS.to_dict()))
    assert main(["segment", "--method", "routine", "--params", str(params), str(scan),
                 str(tmp_path / "masks")]) == 0
    offline = pd.read_csv(tmp_path / "masks" / "spots.csv")
    assert list(offline.columns) == ["frame", "name", *SPOT_COLUMN_NAMES[1:]]
    live = live.sort_values(["frame", "label"], ignore_index=True)
    offline = offline.drop(columns="name")
    assert len(offline) == len(live)
    for column in SPOT_COLUMN_NAMES:
        assert np.allclose(live[column].to_numpy(float), offline[column].to_numpy(float),
                           equal_nan=False), column


def test_the_monitor_scores_friedel_pairs_live(scanned):
    """Each pair of frames 180° apart is scored as soon as both are processed, as the
    offline score scores the masks in the catalog."""
    from labdct_live.segmentation.friedel import frame_spots, friedel_match, friedel_mirror

    session, uid, _ = scanned
    monitor = session.monitor
    by_frames = {tuple(sorted(p["frames"])): p for p in monitor.pairs}
    assert {(i, i + 6) for i in range(6)} <= set(by_frames)
    assert monitor.friedel_summary()["pairs"] == len(monitor.pairs)
    assert monitor.figure().axes[-1].get_ylabel() == "Friedel share"

    binary = session.client["processed"][uid]["binary"].read()
    geometry = session.processors[-1].geometry
    mirror, exclude = friedel_mirror(geometry), geometry.beamstop_mask()
    for a, b in [(1, 7), (4, 10)]:
        spots_a, spots_b = frame_spots(binary[a]), frame_spots(binary[b])
        forward = friedel_match(spots_a, spots_b, mirror, monitor.friedel_tolerance,
                                exclude=exclude)
        backward = friedel_match(spots_b, spots_a, mirror, monitor.friedel_tolerance,
                                 exclude=exclude)
        pair = by_frames[(a, b)]
        assert pair["spots"] == forward.spots + backward.spots > 0
        assert pair["consistent"] == forward.consistent + backward.consistent
