"""The live grain map and the end-of-scan reconstruction: partial maps while the scan runs,
the quality signal, the quality plan, the final map, its comparison and the CLI.

The scan (8 Al grains, 37 projections of 512² at 10°, routine segmentation at a high SNR) is
taken in coarse-first order by ``quality_scan`` with the real RunEngine and an embedded
catalog. The plan's quality source waits, every fifth frame, for the live map to catch up (as
minutes-long exposures would let it), and reads the catalog as a client would; the scan stops
when the map's decision is ``enough``. The end-of-scan hook then reconstructs the final map,
compares it with the simulator's grain map, and a second short run without geometry shows
that a hook failure is recorded, never raised. (tests/test_end_of_scan_reconstruction.py,
``slow``, runs the same hook on a full sequential scan.)
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from bluesky import RunEngine

from labdct_live.acquisition.detector import LabDCTDetector, make_rotation_stage, scaled_geometry
from labdct_live.acquisition.plans import PlanError, coarse_first_order, labdct_scan, quality_scan
from labdct_live.callbacks.live_grainmap import UPDATES_KEY, LiveGrainMap, LiveMapSettings
from labdct_live.callbacks.reconstruction import (
    best_per_omega,
    bin_scan,
    scan_from_catalog,
    scan_setup,
)
from labdct_live.callbacks.scan_quality import (
    CONTINUE,
    ENOUGH,
    RAISE_EXPOSURE,
    DecisionRule,
    ScanQuality,
    decide,
    map_change,
    omega_gap,
)
from labdct_live.cli import main
from labdct_live.grains.formats.gm3d import read_gm3d, write_gm3d
from labdct_live.live.session import LiveSession
from labdct_live.reconstruction import ReconstructionOptions, misorientation_deg, reconstruct
from labdct_live.reconstruction.data import ScanData
from labdct_live.segmentation.routine import RoutineParams
from labdct_live.simulation.forward import Simulator
from labdct_live.simulation.geometry import Geometry
from labdct_live.simulation.microstructure import SampleSpec, make_sample
from labdct_live.simulation.scanfolder import grainmap_of

N_GRAINS = 8
SPEC = SampleSpec("Al", 0.1, 0.1, n_grains=N_GRAINS, name="eos")
OPTIONS = ReconstructionOptions(seed=0)
RULE = DecisionRule(min_frames=15, max_gap=25.0)
BIN = 2  # the live map and the end-of-scan reconstruction work on 256² frames
SETTINGS = LiveMapSettings(every=5, min_frames=8, bin=BIN, options=OPTIONS, rule=RULE)


@pytest.fixture(scope="module")
def live_scan(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("livemap")
    sample = make_sample(SPEC, seed=3)
    reference = tmp / "truth.h5"
    write_gm3d(reference, grainmap_of(sample))
    geometry = scaled_geometry(Geometry(n_projections=37, omega_step=10.0), (512, 512))
    session = LiveSession(tmp / "work", method="routine",
                          method_options={"routine_params": RoutineParams(window=5, sigma=1.0,
                                                                          min_size=3)},
                          export_formats=(), reference=reference, reconstruct=OPTIONS,
                          reconstruct_bin=BIN, live_map=SETTINGS).open()
    live = session.live_grainmap
    seen = {"events": 0, "reads": []}

    def count(name, doc):
        if name == "start":
            seen["uid"] = doc["uid"]
        if name == "event":
            seen["events"] += 1

    session.RE.subscribe(count)

    def quality():
        n, uid = seen["events"], seen["uid"]
        if n % 5 == 0 and n >= 15:  # long exposures would give the map this time
            live.wait_for_update(uid, after=len(live.history.get(uid, [])), timeout=120)
            processed = session.client["processed"]
            if uid in processed and "grainmap" in processed[uid]:
                node = processed[uid]["grainmap"]
                seen["reads"].append((n, dict(node.metadata), node["grain_id"].read()))
        return live.latest(uid)

    try:
        rotation = make_rotation_stage()
        detector = LabDCTDetector(simulator=Simulator(sample, geometry), rotation=rotation,
                                  write_dir=session.raw_dir, seed=1, exposure=20.0,
                                  background_rate=0.0)
        (uid,) = session.RE(quality_scan(detector, rotation, quality, start=-180, stop=180,
                                         step=10, exposure=20.0, stride=8))
        events = seen["events"]
        # a second, short run whose start document has no geometry
        (bad,) = session.RE(labdct_scan(detector, rotation, start=0, stop=40, step=10,
                                        exposure=20.0, md={"geometry": None}))
        seen["events"] = events
        assert session.wait(600)
        yield SimpleNamespace(session=session, uid=uid, bad=bad, sample=sample, seen=seen,
                              live=live)
    finally:
        session.close()


def test_partial_maps_appear_in_the_catalog_during_the_scan(live_scan):
    reads = live_scan.seen["reads"]
    assert reads, "no partial map was readable while the scan ran"
    taken, meta, grain_ids = reads[0]
    assert meta["status"] == "partial" and meta["live_update"] >= 1
    assert meta["frames_used"] <= taken and meta["decision"] in (CONTINUE, ENOUGH)
    assert grain_ids.max() >= N_GRAINS // 2  # the partial map already holds grains


def test_the_scan_stops_when_the_map_is_enough_and_the_final_map_is_the_offline_one(live_scan):
    session, uid = live_scan.session, live_scan.uid
    history = live_scan.live.history[uid]
    n_events = live_scan.seen["events"]
    assert history[-1].decision == ENOUGH
    assert n_events < 37, "the plan took every frame although the map said enough"
    # each decision is the rule applied to the history up to it
    for k, q in enumerate(history):
        assert decide(history[: k + 1], RULE)[0] == q.decision
    node = session.client["processed"][uid]["grainmap"]
    assert node.metadata["status"] == "complete"
    assert len(node[UPDATES_KEY].read()) == len(history)
    result = session.end_of_scan.results[uid]["reconstruction"]
    assert "error" not in result, result
    # the final reconstruction used the distance maps the live map computed as frames came
    meta = node.metadata
    assert meta["live_maps_reused"], meta["live_maps_not_reused"]
    # the final map equals reconstruct() on the catalog's frames, maps computed afresh
    scan = scan_from_catalog(session.client, uid)
    assert scan.n_frames == n_events
    offline = reconstruct(bin_scan(scan, BIN), OPTIONS)
    assert np.array_equal(offline.grainmap.grain_ids, node["grain_id"].read())
    # and it holds the sample's grains: all found within 0.5° from the frames taken
    truth = grainmap_of(live_scan.sample).orientations[1:]
    mis = misorientation_deg(truth[:, None], offline.grainmap.orientations[None, 1:])
    assert mis.min(axis=1).max() < 0.5


def test_decision_rule():
    def q(update, change=0.0, new=0, n_frames=30, gap=10.0, median=0.95, explained=0.9,
          exposure=1.0, advised=1.0, n_grains=10):
        return ScanQuality(update, n_frames, gap, n_grains, median, median, median, change,
                           new, 0, explained, exposure, advised)

    stable = [q(1, change=1.0, new=10), q(2, 0.01), q(3, 0.0)]
    assert decide(stable, RULE)[0] == ENOUGH
    assert decide(stable[:2], RULE)[0] == CONTINUE  # one settled update is not enough
    moving = stable[:2] + [q(3, change=0.05)]
    decision, reason = decide(moving, RULE)
    assert decision == CONTINUE and "still changes" in reason
    assert decide(stable[:2] + [q(3, new=1)], RULE)[0] == CONTINUE
    assert decide(stable[:2] + [q(3, gap=40.0)], RULE)[0] == CONTINUE
    assert decide(stable[:2] + [q(3, n_frames=10)], RULE)[0] == CONTINUE
    # weak spots: raise only when the map suffers for them
    assert decide(stable[:2] + [q(3, advised=3.0)], RULE)[0] == ENOUGH
    decision, reason = decide(stable[:2] + [q(3, advised=3.0, explained=0.3)], RULE)
    assert decision == RAISE_EXPOSURE and "3 s against 1 s" in reason
    assert decide([q(1, advised=3.0, n_grains=0, median=0.0)], RULE)[0] == RAISE_EXPOSURE
    assert decide([], RULE)[0] == CONTINUE
    with pytest.raises(ValueError):
        DecisionRule(raise_factor=1.0)


def test_map_change_counts_changed_voxels_new_and_lost_grains():
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    turned = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    u_before = np.stack([np.eye(3), np.eye(3), turned])
    before = np.array([[[1, 1, 2, 2, 2, 0]]])
    # grain 2 vanished, a new grain took its voxels
    u_now = np.stack([np.eye(3), np.eye(3), turned @ turned])
    change, new, lost = map_change(before, u_before, np.array([[[1, 1, 2, 2, 2, 0]]]), u_now)
    assert (change, new, lost) == (0.5, 1, 1)
    assert map_change(None, None, before, u_before) == (1.0, 2, 0)
    mask = np.array([[[True, True, True, True, False, False]]])
    assert map_change(before, u_before, np.array([[[1, 1, 1, 2, 1, 0]]]), u_before,
                      mask=mask, interior=False)[0] == 0.25
    # in 3-D: a boundary that moves by a voxel is no change; a region taken over is
    halves = np.ones((6, 6, 6), int)
    halves[:, :, 3:] = 2
    moved = halves.copy()
    moved[:, :, 3] = 1
    assert map_change(halves, u_before, moved, u_before)[0] == 0.0
    assert map_change(halves, u_before, moved, u_before, interior=False)[0] == 36 / 216
    wide = np.ones((4, 4, 12), int)
    wide[:, :, 6:] = 2
    taken = wide.copy()
    taken[:, :, 8:] = 1  # columns 9-11 change off the boundaries (5-8); 0-4, 9-11 count
    change, new, lost = map_change(wide, u_before, taken, u_before)
    assert change == pytest.approx(3 / 8) and (new, lost) == (0, 0)
    with pytest.raises(ValueError, match="different shapes"):
        map_change(before, u_before, before[..., :3], u_before)
    assert omega_gap([-180, -90, 0, 90]) == 90.0 and omega_gap([]) == 360.0


def test_coarse_first_order_and_best_per_omega():
    order = coarse_first_order(181, 8)
    assert sorted(order.tolist()) == list(range(181))
    assert order[:23].tolist() == list(range(0, 181, 8))
    with pytest.raises(PlanError):
        coarse_first_order(10, 0)
    # a frame re-taken at a longer exposure replaces the first; equal exposures: the later
    keep = best_per_omega(np.array([0.0, 2.0, 0.0, 2.0]), np.array([1.0, 2.0, 4.0, 2.0]))
    assert keep.tolist() == [2, 3]


def test_quality_scan_raises_the_exposure_once_per_update_and_retakes(tmp_path):
    sample = make_sample(SPEC, seed=3)
    geometry = scaled_geometry(Geometry(n_projections=7, omega_step=10.0), (128, 128))
    rotation = make_rotation_stage()
    detector = LabDCTDetector(simulator=Simulator(sample, geometry), rotation=rotation,
                              write_dir=tmp_path, seed=1, exposure=1.0, background_rate=0.0)
    events = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: events.append(doc) if name == "event" else None)

    def quality():  # the map says "raise" at its first update (after frame 2), then nothing
        if len(events) < 2:
            return None
        return SimpleNamespace(update=1, decision=RAISE_EXPOSURE, advised_exposure=3.0)

    RE(quality_scan(detector, rotation, quality, start=0, stop=60, step=10, exposure=1.0,
                    order="sequential", max_exposure=2.5))
    omegas = [e["data"]["rotation"] for e in events]
    exposures = [e["data"][detector.exposure.name] for e in events]
    assert omegas == [0, 10, 20, 30, 40, 50, 60, 0, 10]  # the two short frames re-taken
    assert exposures == [1.0, 1.0] + [2.5] * 7  # advice clipped to max_exposure, once
    with pytest.raises(PlanError, match="order"):
        quality_scan(detector, rotation, quality, order="random")
    with pytest.raises(PlanError, match="quality_source"):
        quality_scan(detector, rotation, None)


def test_a_run_without_geometry_gets_no_live_map_and_nothing_raises(live_scan):
    live = live_scan.live
    for index in range(2):
        live.add_frame("nogeometry", {"geometry": None}, index, 2.0 * index, 1.0,
                       np.zeros((4, 4), np.uint8))
    assert any("nogeometry" in e and "geometry" in e for e in live.errors)
    assert sum("nogeometry" in e for e in live.errors) == 1  # said once, not per frame
    assert live.decision("nogeometry") == CONTINUE


def test_comparison_with_the_simulators_grain_map_gives_table2_classes(live_scan):
    session, uid = live_scan.session, live_scan.uid
    comparison = session.end_of_scan.results[uid]["comparison"]
    counts = comparison["counts"]
    assert counts["reference"] == N_GRAINS
    assert counts["one_to_one"] + counts["one_to_multi"] + counts["false_negative"] == N_GRAINS
    assert counts["one_to_one"] >= N_GRAINS - 1 and counts["false_positive"] == 0
    assert 0 < comparison["delta_gb"]["mean_um"] < 10
    assert (session.workdir / "export" / uid / "comparison").is_dir()


def test_a_run_without_geometry_records_an_error_and_nothing_raises(live_scan, tmp_path,
                                                                    capsys):
    session, bad = live_scan.session, live_scan.bad
    result = session.end_of_scan.results[bad]
    assert "geometry" in result["reconstruction"]["error"]
    assert "error" in result["comparison"]
    assert "grainmap" not in session.client["processed"][bad]
    processor = next(p for p in session.processors if p.raw_uid == bad)
    assert processor.errors == []  # recorded by the hook, not raised into the processor
    assert any(bad in e and "geometry" in e for e in live_scan.live.errors)
    code = main(["reconstruct", "--from-catalog", session.catalog_uri, "--run", bad,
                 "--api-key", session.api_key, "--out", str(tmp_path / "g.h5")])
    assert code != 0
    assert "geometry" in capsys.readouterr().err


def test_cli_from_catalog_gives_the_hooks_grain_map(live_scan, tmp_path, capsys):
    import pandas as pd

    session, uid = live_scan.session, live_scan.uid
    out = tmp_path / "cli.h5"
    assert main(["reconstruct", "--from-catalog", session.catalog_uri, "--run", uid,
                 "--api-key", session.api_key, "--out", str(out), "--bin", str(BIN)]) == 0
    cli = pd.read_csv(tmp_path / "cli_grains.csv").sort_values("grain_id", ignore_index=True)
    node = session.client["processed"][uid]["grainmap"]
    final = node["grains"].read().sort_values("grain_id", ignore_index=True)
    assert len(cli) == len(final) == node.metadata["n_grains"]
    assert np.allclose(cli[["phi1", "Phi", "phi2"]].to_numpy(),
                       final[["phi1", "Phi", "phi2"]].to_numpy(), atol=1e-4)
    assert np.array_equal(read_gm3d(out).grain_ids, node["grain_id"].read())
    capsys.readouterr()
    code = main(["reconstruct", "--from-catalog", session.catalog_uri, "--run", "../x",
                 "--api-key", session.api_key, "--out", str(tmp_path / "g.h5")])
    assert code != 0 and capsys.readouterr().err.strip()
    code = main(["reconstruct", "--from-catalog", session.catalog_uri, "--run", uid,
                 "--api-key", session.api_key, "--out", str(tmp_path / "g.h5"), "--bin", "3"])
    assert code == 2 and "divisor" in capsys.readouterr().err  # 512 is not a multiple of 3
    assert not (tmp_path / "g.h5").exists()


def test_an_interval_update_comes_between_frames_and_the_maps_outlive_the_next_run(live_scan):
    """``interval``: a map of the frames so far although ``every`` is far off; and a closed
    run's distance maps wait for its final reconstruction while the next run begins."""
    session, uid = live_scan.session, live_scan.uid
    node = session.client["processed"][uid]
    start_doc = dict(session.client[uid].metadata["start"])
    rows = node["frames"].read().sort_values("frame").head(8)
    live = LiveGrainMap(LiveMapSettings(every=1000, interval=0.5, min_frames=7, bin=2,
                                        options=OPTIONS, store=False), report=lambda _: None)
    frames = [node["binary"][int(row.frame)] for row in rows.itertuples()]
    for row, frame in zip(rows.head(7).itertuples(), frames):
        live.add_frame("replayed", start_doc, int(row.frame), row.omega, row.exposure, frame)
    quality = live.wait_for_update("replayed", timeout=300)
    assert quality is not None and quality.n_frames == 7 and quality.n_grains >= 1
    last = rows.iloc[7]
    live.add_frame("replayed", start_doc, int(last.frame), last.omega, last.exposure,
                   frames[7])
    assert live.wait_idle(timeout=300)
    assert len(live.history["replayed"]) == 2  # the interval again, with the 8th frame
    assert live.current_map("replayed") is not None and live.decision("replayed") in (
        CONTINUE, ENOUGH)
    live.close_run("replayed")
    # the next run's first frame comes before the end-of-scan reconstruction asks for the
    # maps (the race of a CI run): they are still there
    live.add_frame("next run", start_doc, 0, 0.0, 1.0, frames[0])
    assert live.wait_idle(timeout=60)
    geometry, material, envelope, extra = scan_setup(start_doc)
    scan = bin_scan(ScanData(np.stack(frames) > 0, rows["omega"].to_numpy(float), geometry,
                             material, envelope, extra=extra), 2)
    assert live.model_for("replayed", scan) is not None, live.not_reused
    live.close_run("next run")
    live.add_frame("third run", start_doc, 0, 0.0, 1.0, frames[0])  # taken: maps freed
    assert live.wait_idle(timeout=60)
    assert live.model_for("replayed", scan) is None


def test_a_refused_update_is_said_once_and_retried_every_k_frames(live_scan, monkeypatch):
    """Masks that fill most pixels: the reconstruction refuses each update; the live map says
    so once and tries again only after ``every`` more frames."""
    import labdct_live.callbacks.live_grainmap as live_grainmap

    calls = []

    def counting_reconstruct(scan, *args, **kwargs):
        calls.append(scan.n_frames)
        return reconstruct(scan, *args, **kwargs)

    monkeypatch.setattr(live_grainmap, "reconstruct", counting_reconstruct)
    session, uid = live_scan.session, live_scan.uid
    start_doc = dict(session.client[uid].metadata["start"])
    rows = session.client["processed"][uid]["frames"].read().sort_values("frame")
    reports = []
    live = LiveGrainMap(LiveMapSettings(every=3, min_frames=3, bin=2, options=OPTIONS,
                                        store=False), report=reports.append)
    full = np.ones((512, 512), np.uint8)
    for row in rows.head(9).itertuples():
        live.add_frame("filled", start_doc, int(row.frame), row.omega, row.exposure, full)
        assert live.wait_idle(timeout=60)  # one frame at a time: the per-frame case
    assert calls == [3, 6, 9]  # after frames 3, 6 and 9, not after each of 4..9
    refusals = [e for e in live.errors if "filled" in e]
    assert len(refusals) == 1 and "refused" in refusals[0] and "%" in refusals[0]
    assert reports == refusals
    assert "pixels" in live.refused["filled"] and live.history["filled"] == []
    assert live.decision("filled") == CONTINUE and live.latest("filled") is None
    live.close_run("filled")


def test_frames_retaken_by_quality_scan_reach_the_catalog(tmp_path):
    """Re-taken frames come after the planned ones: the processed ``binary`` array grows to
    hold them, nothing is spooled, and the run completes (a 500 from tiled and a spool
    waiting for import-spool before)."""
    sample = make_sample(SPEC, seed=3)
    geometry = scaled_geometry(Geometry(n_projections=7, omega_step=10.0), (128, 128))
    with LiveSession(tmp_path / "work", method="routine",
                     method_options={"routine_params": RoutineParams(window=3, sigma=1.0,
                                                                     min_size=3)},
                     export_formats=()) as session:
        rotation = make_rotation_stage()
        detector = LabDCTDetector(simulator=Simulator(sample, geometry), rotation=rotation,
                                  write_dir=session.raw_dir, seed=1, exposure=1.0,
                                  background_rate=0.0)
        seen = []
        session.RE.subscribe(lambda name, doc: seen.append(doc) if name == "event" else None)

        def quality():
            if len(seen) < 2:
                return None
            return SimpleNamespace(update=1, decision=RAISE_EXPOSURE, advised_exposure=3.0)

        (uid,) = session.RE(quality_scan(detector, rotation, quality, start=0, stop=60,
                                         step=10, exposure=1.0, order="sequential"))
        assert session.wait(120)
        node = session.client["processed"][uid]
        assert node["binary"].shape == (9, 128, 128)  # 7 planned + 2 re-taken
        frames = node["frames"].read()
        assert sorted(frames["frame"]) == list(range(9))
        assert node.metadata["status"] == "complete" and node.metadata["n_frames"] == 9
        processor = next(p for p in session.processors if p.raw_uid == uid)
        assert processor.counts["spooled_results"] == 0 and processor.counts["missing"] == 0
        # the re-taken frames' masks are those of their angles at the longer exposure
        assert node["binary"][7].any() and node["binary"][8].any()
