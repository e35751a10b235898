"""Reconstruction-ready exports (labdct_live.export) and ``labdct-live export``."""

from __future__ import annotations

import json
import random

import h5py
import numpy as np
import pytest
import tifffile

from labdct_live.cli import main
from labdct_live.cli.export import FORMAT_NAMES
from labdct_live.export.gm3d import gm3d_frame_names
from labdct_live.export.grainrecon import tilt_angles_zyx
from labdct_live.export.masks import open_mask_folder
from labdct_live.export.metadata import ExportError, ExportMetadata, metadata_from_scan
from labdct_live.export.registry import FORMATS, export_scan
from labdct_live.io.output import OUTPUT_MARKER
from labdct_live.simulation.geometry import Geometry, tilt_matrix

N, ROWS, COLS = 5, 12, 10
OMEGAS = [-6.0, -3.0, 0.0, 3.0, 6.0]
EXPOSURE = [1.0, 2.0, 3.0, 4.0, 5.0]
RAW_NAMES = [f"Fe_scan_{k:04d}.tiff" for k in range(N)]


@pytest.fixture
def geometry():
    return Geometry(lss=13.0, lsd=12.5, detector_shape=(ROWS, COLS), pixel_size=0.01,
                    center=(5.0, 4.5), offset=(0.1, -0.2), beamstop=(4, 6, 3, 5),
                    omega_start=-6.0, omega_step=3.0, n_projections=N, kvp=160.0)


@pytest.fixture
def meta(geometry):
    return {
        "geometry": geometry.to_dict(),
        "omegas": OMEGAS,
        "exposure": EXPOSURE,
        "sample": {"name": "Fe test", "material": "Fe"},
        "processing": {"method": "dl", "model_name": "unet34", "model_hash": "abc123",
                       "threshold": 5.0},
        "frame_names": RAW_NAMES,
        "raw_uid": "run-1",
    }


@pytest.fixture
def frames():
    """Distinct random masks, so a frame written in the wrong place is caught."""
    rng = np.random.default_rng(7)
    masks = (rng.random((N, ROWS, COLS)) < 0.3).astype(np.uint8)
    masks[:, 0, 0] = 0
    masks[np.arange(N), 0, np.arange(N)] = 1  # frame k: first row's pixel k set
    return masks


def _leftovers(folder):
    """What a folder holds, but for the marker of labdct-live's output folders."""
    return sorted(p.name for p in folder.iterdir() if p.name != OUTPUT_MARKER)


# ------------------------------------------------------------------------- round trips
def test_grainrecon_round_trip(tmp_path, meta, frames, geometry):
    out = export_scan(frames, meta, "grainrecon", tmp_path / "gr", progress=False)
    assert out == tmp_path / "gr"
    assert _leftovers(out) == ["grainrecon.json", "omega.txt",
                               "proj0001.tif", "proj0002.tif", "proj0003.tif", "proj0004.tif",
                               "proj0005.tif"]
    for k in range(N):
        image = tifffile.imread(out / f"proj{k + 1:04d}.tif")
        assert image.dtype == np.uint8
        np.testing.assert_array_equal(image, frames[k] * 255)
    np.testing.assert_array_equal(np.loadtxt(out / "omega.txt"), OMEGAS)
    sidecar = json.loads((out / "grainrecon.json").read_text())
    p = sidecar["grainrecon_parameters"]
    assert (p["Lsam2sou"], p["Lsam2det"]) == (13.0, 12.5)
    assert (p["detysize"], p["detzsize"]) == (COLS, ROWS)
    assert p["pixelysize"] == p["pixelzsize"] == 0.01
    assert (p["dety0"], p["detz0"]) == (5.5, 6.0)  # 1-based (col, row) of the beam centre
    assert (p["dety00"], p["detz00"]) == (0.1, -0.2)
    assert p["BeamStopY"] == [4, 6] and p["BeamStopZ"] == [5, 7]
    assert (p["tilt_x"], p["tilt_y"], p["tilt_z"]) == (0.0, 0.0, 0.0)
    assert p["ExpTime"] is None  # exposures differ per frame
    assert p["rotation_step"] == 3.0
    assert sidecar["exposure_s"] == EXPOSURE and sidecar["omega_deg"] == OMEGAS
    assert sidecar["processing"] == {"method": "dl",
                                     "model": {"name": "unet34", "hash": "abc123"},
                                     "parameters": {"threshold": 5.0}}
    assert sidecar["extra"] == {"raw_uid": "run-1"}
    assert Geometry(**sidecar["geometry"]) == geometry


def test_grainrecon_constant_exposure_and_tilt(tmp_path, meta, frames, geometry):
    meta["exposure"] = 500.0
    meta["geometry"] = geometry.with_(tilt=(0.4, 0.0, 0.0), beamstop=(0, -1, 0, -1)).to_dict()
    out = export_scan(frames, meta, "grainrecon", tmp_path / "gr", progress=False)
    p = json.loads((out / "grainrecon.json").read_text())["grainrecon_parameters"]
    assert p["ExpTime"] == 500.0
    assert p["tilt_x"] == pytest.approx(0.4) and p["tilt_y"] == pytest.approx(0.0)
    assert p["BeamStopY"] is None and p["BeamStopZ"] is None


def test_frames_as_unordered_pairs_land_in_their_places(tmp_path, meta, frames):
    pairs = [(k, frames[k].astype(bool)) for k in range(N)]
    random.Random(3).shuffle(pairs)
    out = export_scan(iter(pairs), meta, "grainrecon", tmp_path / "gr", progress=False)
    for k in range(N):
        np.testing.assert_array_equal(tifffile.imread(out / f"proj{k + 1:04d}.tif"),
                                      frames[k] * 255)


def test_gm3d_round_trip(tmp_path, meta, frames):
    out = export_scan(list(frames), meta, "gm3d", tmp_path / "gm", progress=False)
    assert _leftovers(out) == sorted(RAW_NAMES + ["gm3d_export.json"])
    for k, name in enumerate(RAW_NAMES):
        image = tifffile.imread(out / name)
        assert image.dtype == np.uint16
        np.testing.assert_array_equal(image, frames[k].astype(np.uint16) * 65535)
    sidecar = json.loads((out / "gm3d_export.json").read_text())
    assert "not public" in sidecar["assumption"]
    assert [f["file"] for f in sidecar["frames"]] == RAW_NAMES
    assert [f["omega_deg"] for f in sidecar["frames"]] == OMEGAS
    assert [f["exposure_s"] for f in sidecar["frames"]] == EXPOSURE
    acq = sidecar["acquisition"]
    assert (acq["source_sample_distance_mm"], acq["sample_detector_distance_mm"]) == (13.0, 12.5)
    assert acq["pixel_size_mm"] == 0.01
    assert acq["detector_size_px"] == {"rows": ROWS, "cols": COLS}
    assert acq["beam_stop_px"] == {"row_min": 4, "row_max": 6, "col_min": 3, "col_max": 5}
    assert acq["detector_tilt_deg"] == [0.0, 0.0, 0.0]
    assert sidecar["sample"]["name"] == "Fe test"
    assert sidecar["processing"]["model"]["hash"] == "abc123"


def test_gm3d_spot_value_and_default_names(tmp_path, meta, frames):
    del meta["frame_names"]
    out = export_scan(frames, meta, "gm3d", tmp_path / "gm", spot_value=1, progress=False)
    names = [f"Fe_test_{k:04d}.tif" for k in range(N)]
    assert _leftovers(out) == sorted(names + ["gm3d_export.json"])
    np.testing.assert_array_equal(tifffile.imread(out / names[2]), frames[2])


def test_gm3d_names_from_raw_names(meta):
    meta["frame_names"] = ["C:\\data\\a.txrm", "run/b.TIF", "s.tif#0", "s.tif#1", "c"]
    assert gm3d_frame_names(meta) == ["a.txrm.tif", "b.TIF", "s_p0000.tif", "s_p0001.tif",
                                      "c.tif"]
    meta["frame_names"] = ["x/a.tif", "y/a.tif", "b", "c", "d"]
    with pytest.raises(ExportError, match="unique"):
        gm3d_frame_names(meta)


def test_nexus_round_trip(tmp_path, meta, frames, geometry):
    raw = (np.arange(N * ROWS * COLS, dtype=np.uint16) * 7).reshape(N, ROWS, COLS)
    out = export_scan(frames, meta, "nexus", tmp_path / "nx", raw_frames=raw, progress=False)
    assert _leftovers(out) == ["scan.nxs"]
    with h5py.File(out / "scan.nxs", "r") as f:
        classes = {path: f[path].attrs["NX_class"] for path in (
            "entry", "entry/instrument", "entry/instrument/detector", "entry/instrument/source",
            "entry/sample", "entry/data", "entry/raw", "entry/process",
            "entry/process/parameters")}
        assert classes == {
            "entry": "NXentry", "entry/instrument": "NXinstrument",
            "entry/instrument/detector": "NXdetector", "entry/instrument/source": "NXsource",
            "entry/sample": "NXsample", "entry/data": "NXdata", "entry/raw": "NXdata",
            "entry/process": "NXprocess", "entry/process/parameters": "NXparameters"}
        data = f["entry/data/data"]
        assert data.dtype == np.uint8 and data.chunks == (1, ROWS, COLS)
        assert data.compression == "gzip"
        assert data.id == f["entry/instrument/detector/data"].id  # one dataset, two names
        np.testing.assert_array_equal(data[()], frames)
        assert f["entry/data"].attrs["signal"] == "data"
        np.testing.assert_array_equal(f["entry/data/rotation_angle"][()], OMEGAS)
        np.testing.assert_array_equal(f["entry/instrument/detector/count_time"][()], EXPOSURE)
        np.testing.assert_array_equal(f["entry/instrument/detector/raw_data"][()], raw)
        assert f["entry/instrument/detector/raw_data"].dtype == np.uint16
        det = f["entry/instrument/detector"]
        assert det["distance"][()] == 12.5 and det["x_pixel_size"][()] == 0.01
        assert (det["beam_center_x"][()], det["beam_center_y"][()]) == (4.5, 5.0)
        assert f["entry/instrument/source/distance"][()] == -13.0
        stored = json.loads(f["entry/instrument/geometry"][()])
        assert Geometry(**stored) == geometry
        assert f["entry/process/method"][()].decode() == "dl"
        assert f["entry/process/model_hash"][()].decode() == "abc123"
        assert f["entry/process/parameters/threshold"][()] == 5.0
        names = [v.decode() for v in f["entry/process/frame_names"][()]]
        assert names == RAW_NAMES
        assert f["entry/sample/name"][()].decode() == "Fe test"


def test_tilt_angles_zyx_give_the_same_rotation():
    def rx(a):
        c, s = np.cos(np.radians(a)), np.sin(np.radians(a))
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])

    def ry(a):
        c, s = np.cos(np.radians(a)), np.sin(np.radians(a))
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])

    def rz(a):
        c, s = np.cos(np.radians(a)), np.sin(np.radians(a))
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])

    tilt = (1.5, -2.0, 3.0)
    tx, ty, tz = tilt_angles_zyx(tilt)
    np.testing.assert_allclose(rz(tz) @ ry(ty) @ rx(tx), rx(1.5) @ ry(-2.0) @ rz(3.0),
                               atol=1e-12)
    np.testing.assert_allclose(tilt_matrix(tilt), rx(1.5) @ ry(-2.0) @ rz(3.0), atol=1e-12)
    assert not np.allclose((tx, ty, tz), tilt)  # the orders really differ
    np.testing.assert_allclose(tilt_angles_zyx((0.0, 0.7, 0.0)), (0.0, 0.7, 0.0), atol=1e-12)


# --------------------------------------------------------------------------- bad input
def _bad_shape(frames):
    items = list(frames)
    items[3] = np.zeros((ROWS, COLS + 1), np.uint8)
    return items


def _non_binary(frames):
    bad = frames.copy()
    bad[3, 2, 2] = 2
    return bad


def _missing_frame(frames):
    return ((k, frames[k]) for k in (0, 1, 3, 4))


def _repeated_frame(frames):
    return ((k, frames[k]) for k in (0, 1, 1, 3, 4))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("damage, message", [
    (_bad_shape, "shape"),
    (_non_binary, "not binary: it holds the values 0, 1, 2"),
    (lambda f: f[:4], "holds 4 frames but the metadata lists 5 omegas"),
    (_missing_frame, "1 of 5 frames are missing"),
    (_repeated_frame, "given twice"),
])
def test_bad_frames_leave_no_output(tmp_path, meta, frames, fmt, damage, message):
    with pytest.raises(ExportError, match=message):
        export_scan(damage(frames), meta, fmt, tmp_path / "out", progress=False)
    assert _leftovers(tmp_path) == []


def test_bad_raw_frames_leave_no_output(tmp_path, meta, frames):
    raw = np.zeros((N, ROWS, COLS), np.uint16)
    with pytest.raises(ExportError, match="raw_frames"):
        export_scan(frames, meta, "nexus", tmp_path / "out", raw_frames=raw[:, :-1],
                    progress=False)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_existing_output_needs_overwrite(tmp_path, meta, frames, fmt):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    with pytest.raises(FileExistsError, match="not empty"):
        export_scan(frames, meta, fmt, out, progress=False)
    # --overwrite replaces only labdct-live's own output folders, never the user's files.
    with pytest.raises(FileExistsError, match="not written by labdct-live"):
        export_scan(frames, meta, fmt, out, overwrite=True, progress=False)
    assert _leftovers(out) == ["keep.txt"] and _leftovers(tmp_path) == ["out"]
    (out / "keep.txt").unlink()
    export_scan(frames, meta, fmt, out, progress=False)
    first = _leftovers(out)
    export_scan(frames, meta, fmt, out, overwrite=True, progress=False)
    assert _leftovers(out) == first and _leftovers(tmp_path) == ["out"]


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("geometry"), "geometry'] is missing"),
    (lambda m: m["geometry"].update(wavelength=1.0), "unknown key"),
    (lambda m: m.update(exposure=[1.0, 2.0]), "exposure"),
    (lambda m: m.update(frame_names=["a.tif"]), "frame_names"),
    (lambda m: m.update(omegas=[0.0, float("nan")]), "omegas"),
])
def test_bad_metadata_is_a_clear_error(tmp_path, meta, frames, change, message):
    change(meta)
    with pytest.raises(ExportError, match=message):
        export_scan(frames, meta, "grainrecon", tmp_path / "out", progress=False)
    assert _leftovers(tmp_path) == []


def test_unknown_format(tmp_path, meta, frames):
    with pytest.raises(ExportError, match="grainrecon"):
        export_scan(frames, meta, "tiff", tmp_path / "out")


def test_metadata_defaults_and_round_trip(geometry):
    meta = ExportMetadata.from_dict({"geometry": geometry, "sample": "D35",
                                     "processing": {"method": "routine",
                                                    "params": {"sigma": 6.0}}})
    np.testing.assert_array_equal(meta.omegas, geometry.omegas)
    assert meta.exposure is None and meta.sample == {"name": "D35"}
    assert meta.processing == {"method": "routine", "model": None,
                               "parameters": {"sigma": 6.0}}
    again = ExportMetadata.from_dict(json.loads(json.dumps(meta.to_dict())))
    assert again.geometry == geometry and again.processing == meta.processing
    np.testing.assert_array_equal(again.omegas, meta.omegas)


def test_cli_format_names_match_the_library():
    assert set(FORMAT_NAMES) == set(FORMATS)


# ------------------------------------------------------- a tiny simulated scan, end to end
@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """A 3-projection scan of 8 grains on a 128² detector, and its truth-derived masks."""
    from labdct_live.simulation.microstructure import SampleSpec, make_sample
    from labdct_live.simulation.scanfolder import SimulatedScan, write_simulated_scan

    root = tmp_path_factory.mktemp("export")
    sample = make_sample(SampleSpec(material="Al", diameter=0.05, height=0.05, n_grains=8,
                                    name="tiny"), seed=3)
    geometry = Geometry(detector_shape=(128, 128), pixel_size=0.0033623 * 16, n_projections=3,
                        omega_step=120.0)
    scan_dir = write_simulated_scan(root / "scan", sample, geometry, progress=False)
    scan = SimulatedScan.open(scan_dir)
    truth = np.stack([(scan.labels(k) > 0).astype(np.uint8) for k in range(len(scan))])
    assert truth.sum(axis=(1, 2)).min() > 50  # every frame has spots to compare
    masks = root / "masks"  # what 'labdct-live segment' writes: 0/255, the frames' names
    masks.mkdir()
    for k in range(len(scan)):
        tifffile.imwrite(masks / f"proj_{k:04d}.tif", truth[k] * np.uint8(255))
    (masks / "segmentation.json").write_text(json.dumps(
        {"method": "routine", "params": {"sigma": 6.0, "min_size": 10}}))
    return scan_dir, masks, truth


def test_cli_exports_a_simulated_scan(tmp_path, simulated):
    scan_dir, masks, truth = simulated
    for fmt in ("grainrecon", "gm3d"):
        assert main(["export", str(masks), "--scan", str(scan_dir), "--format", fmt,
                     "--out", str(tmp_path / fmt)]) == 0
    for k in range(3):
        np.testing.assert_array_equal(
            tifffile.imread(tmp_path / "grainrecon" / f"proj{k + 1:04d}.tif"), truth[k] * 255)
        np.testing.assert_array_equal(
            tifffile.imread(tmp_path / "gm3d" / f"proj_{k:04d}.tif"),
            truth[k].astype(np.uint16) * 65535)
    gr = json.loads((tmp_path / "grainrecon" / "grainrecon.json").read_text())
    assert gr["omega_deg"] == [-180.0, -60.0, 60.0]
    assert gr["processing"] == {"method": "routine", "model": None,
                                "parameters": {"sigma": 6.0, "min_size": 10}}
    assert gr["sample"]["name"] == "tiny" and gr["sample"]["seed"] == 3
    assert gr["grainrecon_parameters"]["detysize"] == 128

    assert main(["export", str(masks), "--scan", str(scan_dir), "--format", "nexus",
                 "--out", str(tmp_path / "nx"), "--raw", str(scan_dir / "frames")]) == 0
    with h5py.File(tmp_path / "nx" / "scan.nxs", "r") as f:
        np.testing.assert_array_equal(f["entry/data/data"][()], truth)
        np.testing.assert_array_equal(f["entry/instrument/detector/raw_data"][2],
                                      tifffile.imread(scan_dir / "frames" / "proj_0002.tif"))


def test_cli_with_meta_file_and_library_call_agree(tmp_path, simulated):
    scan_dir, masks, truth = simulated
    meta = metadata_from_scan(scan_dir)
    meta["exposure"] = 60.0
    meta_file = tmp_path / "meta.json"
    meta_file.write_text(json.dumps(meta))
    assert main(["export", str(masks), "--meta", str(meta_file), "--format", "gm3d",
                 "--out", str(tmp_path / "cli")]) == 0
    export_scan(truth, meta, "gm3d", tmp_path / "lib", progress=False)
    for k in range(3):
        name = f"proj_{k:04d}.tif"
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "cli" / name),
                                      tifffile.imread(tmp_path / "lib" / name))
    cli = json.loads((tmp_path / "cli" / "gm3d_export.json").read_text())
    assert cli["exposure_s"] == [60.0] * 3
    assert cli["processing"]["method"] == "routine"  # from segmentation.json


def test_cli_follows_the_metadata_frame_order(tmp_path, simulated):
    scan_dir, masks, truth = simulated
    meta = metadata_from_scan(scan_dir)
    meta["frame_names"] = meta["frame_names"][::-1]
    meta["omegas"] = meta["omegas"][::-1]
    meta_file = tmp_path / "meta.json"
    meta_file.write_text(json.dumps(meta))
    assert main(["export", str(masks), "--meta", str(meta_file), "--format", "nexus",
                 "--out", str(tmp_path / "nx"), "--raw", str(scan_dir / "frames")]) == 0
    with h5py.File(tmp_path / "nx" / "scan.nxs", "r") as f:
        np.testing.assert_array_equal(f["entry/data/data"][()], truth[::-1])
        np.testing.assert_array_equal(f["entry/data/rotation_angle"][()], [60.0, -60.0, -180.0])
        np.testing.assert_array_equal(f["entry/instrument/detector/raw_data"][0],
                                      tifffile.imread(scan_dir / "frames" / "proj_0002.tif"))


def test_cli_errors(tmp_path, simulated, capsys):
    scan_dir, masks, _ = simulated
    assert main(["export", str(masks), "--format", "gm3d", "--out", str(tmp_path / "a")]) == 2
    assert "--scan DIR" in capsys.readouterr().err
    # raw frames are not masks
    assert main(["export", str(scan_dir / "frames"), "--scan", str(scan_dir), "--format",
                 "gm3d", "--out", str(tmp_path / "b")]) == 2
    assert "not a binary mask" in capsys.readouterr().err
    assert main(["export", str(masks), "--scan", str(scan_dir), "--format", "gm3d",
                 "--out", str(tmp_path / "c"), "--raw", str(scan_dir / "frames")]) == 2
    assert "only used by --format nexus" in capsys.readouterr().err
    assert _leftovers(tmp_path) == []


def test_open_mask_folder_follows_the_scan_order(tmp_path):
    for name, value in (("b.tif", 1), ("a.tif", 2), ("c.tif", 3)):
        mask = np.zeros((4, 4), np.uint8)
        mask[0, :value] = 255
        tifffile.imwrite(tmp_path / name, mask)
    folder = open_mask_folder(tmp_path, ["frames/c.tif", "a.tif", "b.tif"])
    assert folder.names == ["c.tif", "a.tif", "b.tif"] and len(folder) == 3
    assert [(k, int(m.sum())) for k, m in folder] == [(0, 3), (1, 2), (2, 1)]
    with pytest.raises(ExportError, match=r"missing \['d.tif'\]"):
        open_mask_folder(tmp_path, ["a.tif", "b.tif", "d.tif"])
