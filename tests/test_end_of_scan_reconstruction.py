"""The end-of-scan reconstruction: real RunEngine, embedded catalog, live routine processing.

One small scan (8 Al grains, 37 projections, a 512² detector with the paper's field of view,
the geometry of tests/test_reconstruction.py) is acquired by the simulated detector at a long
exposure with no background (spot SNR high), segmented live by the standard routine, and
reconstructed by ``EndOfScan(reconstruct=...)`` in the processor's worker thread. The grain
map in the catalog must equal ``reconstruct`` run offline on the same binary frames. The
comparison, a run without geometry and the CLI are tested on the live grain map's scan
(tests/test_live_grainmap.py), which CI runs; this full sequential scan runs with the slow set.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from labdct_live.acquisition.detector import LabDCTDetector, make_rotation_stage, scaled_geometry
from labdct_live.acquisition.plans import labdct_scan
from labdct_live.grains.formats.gm3d import read_gm3d, write_gm3d
from labdct_live.live.session import LiveSession
from labdct_live.reconstruction import (
    ReconstructionOptions,
    SampleEnvelope,
    ScanData,
    misorientation_deg,
    reconstruct,
)
from labdct_live.segmentation.routine import RoutineParams
from labdct_live.simulation.forward import Simulator
from labdct_live.simulation.geometry import Geometry
from labdct_live.simulation.microstructure import SampleSpec, make_sample
from labdct_live.simulation.scanfolder import grainmap_of

pytestmark = pytest.mark.slow

N_GRAINS = 8
SPEC = SampleSpec("Al", 0.1, 0.1, n_grains=N_GRAINS, name="eos")
OPTIONS = ReconstructionOptions(seed=0)
PARAMS = RoutineParams(window=5, sigma=1.0, min_size=3)
EXPOSURE = 20.0


@pytest.fixture(scope="module")
def acquired(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eos")
    sample = make_sample(SPEC, seed=3)
    reference = tmp / "truth.h5"
    write_gm3d(reference, grainmap_of(sample))
    geometry = scaled_geometry(Geometry(n_projections=37, omega_step=10.0), (512, 512))
    session = LiveSession(tmp / "work", method="routine",
                          method_options={"routine_params": PARAMS}, export_formats=(),
                          reference=reference, reconstruct=OPTIONS).open()
    try:
        rotation = make_rotation_stage()
        detector = LabDCTDetector(simulator=Simulator(sample, geometry), rotation=rotation,
                                  write_dir=session.raw_dir, seed=1, exposure=EXPOSURE,
                                  background_rate=0.0)
        t0 = time.perf_counter()
        (uid,) = session.RE(labdct_scan(detector, rotation, start=-180, stop=180, step=10,
                                        exposure=EXPOSURE))
        assert session.wait(600)
        print(f"scans + processing + reconstruction: {time.perf_counter() - t0:.1f} s")
        yield session, uid, sample
    finally:
        session.close()


def test_grainmap_node_equals_the_offline_reconstruction(acquired):
    session, uid, sample = acquired
    result = session.end_of_scan.results[uid]["reconstruction"]
    assert "error" not in result, result
    node = session.client["processed"][uid]["grainmap"]
    meta = node.metadata
    assert meta["status"] == "complete"
    assert meta["frames_status"] == "complete" and meta["raw_uid"] == uid
    assert meta["n_grains"] == result["n_grains"] == len(node["grains"].read())
    grains = node["grains"].read().sort_values("grain_id", ignore_index=True)

    # offline: the same binary frames, the scan's own geometry and sample
    start = session.client[uid].metadata["start"]
    frames = session.client["processed"][uid]["binary"].read() > 0
    scan = ScanData(frames, np.asarray(start["omegas"]), Geometry.from_dict(start["geometry"]),
                    "Al", SampleEnvelope(SPEC.diameter, SPEC.height),
                    extra={"n_grains": N_GRAINS, "voxel_size": SPEC.resolved_voxel_size})
    offline = reconstruct(scan, OPTIONS)
    assert len(offline.grains) == len(grains)
    assert np.array_equal(offline.grainmap.grain_ids, node["grain_id"].read())
    off = offline.grains.sort_values("grain_id", ignore_index=True)
    assert np.allclose(off[["phi1", "Phi", "phi2"]].to_numpy(),
                       grains[["phi1", "Phi", "phi2"]].to_numpy(), atol=1e-6)
    # the file next to the exports holds the same map
    written = read_gm3d(result["grainmap"])
    assert np.array_equal(written.grain_ids, offline.grainmap.grain_ids)
    # and the grains are the sample's: every true orientation found within 0.5°
    truth = grainmap_of(sample).orientations[1:]
    mis = misorientation_deg(truth[:, None], offline.grainmap.orientations[None, 1:])
    assert mis.min(axis=1).max() < 0.5
