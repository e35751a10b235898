"""Following a run live: snapshots, the figure, ``watch`` and ``labdct-live watch``.

One short real scan (the RunEngine, the simulated detector, the embedded tiled catalog,
live routine processing), then a grain map written into ``processed/<uid>/grainmap`` by
hand, the way the live grain map writes it (status "running", arrays, then metadata).
"""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pandas as pd
import pytest

from labdct_live.acquisition.plans import labdct_scan
from labdct_live.cli import main
from labdct_live.live import viewer
from labdct_live.live.session import LiveSession
from labdct_live.live.viewer import read_snapshot, snapshot_figure, watch

SHAPE = (128, 128)
N = 11  # frames of 0..20 deg in steps of 2
IDS_SHAPE = (6, 8, 10)
UNREACHABLE = "http://127.0.0.1:9"  # discard port: nothing answers


def _ids(value: int) -> np.ndarray:
    ids = np.zeros(IDS_SHAPE, np.int32)
    ids[:, 2:6, 3:8] = value
    ids[:, :2, :3] = value + 1
    return ids


def _follow(session, followed: dict):
    """A RunEngine subscriber that starts :func:`watch` (its own client, its own thread)
    on the run as soon as the run starts, before any frame is processed."""
    from labdct_live.catalog.client import connect

    def follow(name, doc):
        if name != "start":
            return
        client = connect(session.catalog_uri, session.api_key)
        seen = followed.setdefault("seen", [])
        followed["thread"] = thread = threading.Thread(
            target=lambda: followed.update(last=watch(client, doc["uid"], interval=0.5,
                                                      timeout=90, on_snapshot=seen.append)),
            daemon=True)
        thread.start()

    return follow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(session, uid, grainmap container, what watch saw) of one short scan processed live,
    followed by :func:`watch` while it ran."""
    session = LiveSession(tmp_path_factory.mktemp("viewer") / "work", method="routine",
                          export_formats=()).open()
    try:
        detector, rotation = session.simulated_instrument("D18", detector_shape=SHAPE, seed=1)
        followed: dict = {}
        token = session.RE.subscribe(_follow(session, followed))
        t0 = time.perf_counter()
        (uid,) = session.RE(labdct_scan(detector, rotation, start=0, stop=20, step=2,
                                        exposure=2.0))
        session.RE.unsubscribe(token)
        assert session.wait(120)
        followed["thread"].join(60)
        print(f"scan + live processing: {time.perf_counter() - t0:.1f} s; watch saw "
              f"{[(s.status, s.n_processed) for s in followed['seen']]}")
        session.followed = followed
        container = session.client["processed"][uid].create_container(
            "grainmap", metadata={"status": "running"})
        container.write_array(np.ascontiguousarray(_ids(1)), key="grain_id",
                              dims=["z", "y", "x"])
        container.write_table(pd.DataFrame({"live_update": [1], "n_frames": [N],
                                            "decision": ["continue"]}), key="updates")
        yield session, uid, container
    finally:
        session.close()


def test_watch_follows_the_scan_while_it_runs(run):
    session, uid, _ = run
    seen, last = session.followed["seen"], session.followed["last"]
    assert last.uid == uid and last.finished and last.n_processed == N
    assert len(seen) >= 2 and seen[0].status == "running" and seen[-1] is last
    counts = [s.n_processed for s in seen]
    assert counts == sorted(counts) and counts[0] < N
    assert len({s.signature for s in seen}) == len(seen)  # one call per change
    # the figure of the run before its first result: every panel says so, nothing fails
    first = next(s for s in seen if s.n_processed == 0) if counts[0] == 0 else None
    if first is not None:
        fig = snapshot_figure(first)
        fig.savefig(io.BytesIO(), format="png")
        texts = {t.get_text() for ax in fig.axes for t in ax.texts}
        assert {"no frame yet", "no segmentation yet", "no grain map yet"} <= texts


def _set_grainmap(container, status: str, live_update: int = 1) -> None:
    container.update_metadata({"status": status, "live_update": live_update,
                               "decision": "continue", "reason": "coverage 40 % < 90 %"})


def test_snapshot_holds_the_latest_frame_its_mask_and_the_snr_trace(run):
    session, uid, container = run
    _set_grainmap(container, "partial")
    snap = read_snapshot(session.client, uid)
    assert snap.uid == uid and snap.status in ("complete", "complete-with-errors")
    start = session.client[uid].metadata["start"]
    taken = session.client[uid]["primary"][start["image_key"]].shape[0]
    assert snap.n_processed == snap.n_frames == taken == N
    assert snap.latest_frame == N - 1 and snap.latest_omega == pytest.approx(20.0)
    assert snap.raw_frame is not None and snap.raw_frame.shape == SHAPE
    assert snap.segmentation.shape == SHAPE and snap.segmentation.dtype == np.uint8
    assert np.array_equal(snap.segmentation,
                          session.client["processed"][uid]["binary"][N - 1])
    assert len(snap.trace) == N and list(snap.trace["frame"]) == list(range(N))
    assert {"omega", "status", "snr_p5", "snr_p50", "snr_p95", "n_spots"} <= set(snap.trace)
    assert snap.grainmap_status == "partial" and snap.live_update == 1
    assert snap.decision == "continue" and snap.reason.startswith("coverage")
    assert np.array_equal(snap.grain_ids, _ids(1)) and len(snap.updates) == 1
    assert snap.finished is False  # processing is over, the grain map is not


def test_a_grainmap_being_written_is_not_read(run):
    session, uid, container = run
    _set_grainmap(container, "running", 2)
    snap = read_snapshot(session.client, uid)
    assert snap.grainmap_status == "running" and snap.live_update == 2
    assert snap.grain_ids is None and snap.updates is None


def test_an_update_between_the_reads_is_retried(run, monkeypatch):
    """The writer publishes update 2 while the reader holds update 1's arrays: the reader
    must read again and return update 2's arrays with update 2's metadata."""
    session, uid, container = run
    node = session.client["processed"][uid]["grainmap"]
    node["grain_id"].write(np.ascontiguousarray(_ids(1)))
    _set_grainmap(container, "partial", 1)
    real = viewer._read_grain_arrays
    reads = []

    def writer_in_between(client, key):
        arrays = real(client, key)
        reads.append(arrays[0].max())
        if len(reads) == 1:  # the live grain map's next update lands now
            node["grain_id"].write(np.ascontiguousarray(_ids(5)))
            _set_grainmap(container, "partial", 2)
        return arrays

    monkeypatch.setattr(viewer, "_read_grain_arrays", writer_in_between)
    snap = read_snapshot(session.client, uid)
    assert reads == [2, 6]
    assert snap.live_update == 2 and np.array_equal(snap.grain_ids, _ids(5))


def test_a_node_named_otherwise_shows_the_frames_of_its_raw_run(run):
    """A replay's node (another key) names its raw run in ``raw_uid``."""
    session, uid, _ = run
    source = session.client["processed"][uid]
    node = session.client["processed"].create_container(
        f"{uid}-copy", metadata={"raw_uid": uid, "status": "complete", "n_frames": N})
    node.write_array(source["binary"].read(), key="binary", dims=["frame", "y", "x"])
    frames = source["frames"].read()  # rows in the order written, not by frame
    node.write_table(frames[frames["frame"] < 4], key="frames")
    snap = read_snapshot(session.client, f"{uid}-copy")
    assert snap.n_processed == 4 and snap.latest_frame == 3
    expected = session.client[uid]["primary"][
        session.client[uid].metadata["start"]["image_key"]][3]
    assert np.array_equal(snap.raw_frame, expected)
    assert snap.grainmap_status is None and snap.finished


def test_figure_has_four_panels_and_renders(run, tmp_path):
    session, uid, container = run
    _set_grainmap(container, "partial", 3)
    fig = snapshot_figure(read_snapshot(session.client, uid))
    panels = {ax.get_subplotspec().get_geometry() for ax in fig.axes}
    assert len(panels) == 4  # (the SNR panel's spot-count twin shares its panel)
    assert uid[:8] in fig.get_suptitle() and "update 3" in fig.get_suptitle()
    fig.savefig(tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _set_grainmap(container, "running", 4)
    empty = snapshot_figure(read_snapshot(session.client, uid))
    texts = [t.get_text() for ax in empty.axes for t in ax.texts]
    assert "no grain map yet" in texts


def test_watch_returns_when_the_grainmap_is_complete(run, tmp_path):
    session, uid, container = run
    _set_grainmap(container, "partial", 5)
    png = tmp_path / "live.png"
    seen = []

    def on_snapshot(snapshot):
        seen.append(snapshot)
        if len(seen) == 1:  # the live grain map's final update lands after the first look
            threading.Timer(0.5, _set_grainmap, (container, "complete", 6)).start()

    t0 = time.monotonic()
    last = watch(session.client, uid, interval=0.2, png=png, timeout=30,
                 on_snapshot=on_snapshot)
    assert time.monotonic() - t0 < 20
    assert last.finished and last.grainmap_status == "complete" and last.live_update == 6
    assert [s.live_update for s in seen] == [5, 6]  # one call per change, none per poll
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*part"))  # the temporary file was renamed


def test_watch_gives_up_after_its_timeout(run):
    session, uid, container = run
    _set_grainmap(container, "running", 7)
    t0 = time.monotonic()
    last = watch(session.client, uid, interval=0.2, timeout=0.8)
    assert 0.7 < time.monotonic() - t0 < 10 and not last.finished


def test_cli_once_writes_the_png(run, tmp_path, capsys):
    session, uid, container = run
    _set_grainmap(container, "complete", 8)
    png = tmp_path / "once.png"
    assert main(["watch", session.catalog_uri, "--run", uid, "--api-key", session.api_key,
                 "--once", "--png", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and f"frames {N}/{N}" in out[0] and "update 8" in out[0]
    # the whole watch: the run is finished, so it prints once and returns 0
    assert main(["watch", session.catalog_uri, "--run", uid, "--api-key", session.api_key,
                 "--interval", "0.2", "--timeout", "20"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1


@pytest.mark.parametrize("uid", ["../etc", "a/b", "", ".hidden"])
def test_unsafe_uids_are_refused_before_the_catalog_is_asked(uid, capsys):
    with pytest.raises(ValueError, match="not a safe name"):
        read_snapshot(None, uid)  # None: any use of the client would fail otherwise
    with pytest.raises(ValueError, match="not a safe name"):
        watch(None, uid)
    # an unreachable catalog: refusing the uid first gives 2, connecting would give 1
    assert main(["watch", UNREACHABLE, "--run", uid, "--once"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a safe name" in err


def test_a_run_not_in_the_catalog_is_named(run, capsys):
    session, _, _ = run
    with pytest.raises(LookupError, match="no-such-run"):
        read_snapshot(session.client, "no-such-run")
    assert main(["watch", session.catalog_uri, "--run", "no-such-run", "--api-key",
                 session.api_key, "--once"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-run" in err and "processed" in err


def test_an_unreachable_catalog_is_one_line(capsys):
    assert main(["watch", UNREACHABLE, "--run", "abc", "--once"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unreachable" in err
