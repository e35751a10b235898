"""The command line never loses data and fails with one clear line.

Every test runs ``labdct_live.cli.main`` in-process and checks, for a class of error over the
commands it concerns: exit status != 0, exactly one line ``labdct-live CMD: error: ...`` on
stderr (progress bars aside) naming the offending path or option, no traceback, the inputs
untouched and no partial output left behind.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from labdct_live.cli import main
from labdct_live.io.output import OUTPUT_MARKER
from labdct_live.simulation.geometry import Geometry

N_FRAMES, SHAPE = 11, (64, 64)

#: A tqdm progress bar's line (they may precede the error line on stderr).
_PROGRESS = re.compile(r"\d+%\|")


# --------------------------------------------------------------------------------- helpers
def run_cli(argv: list, capsys) -> tuple[int, str]:
    """``(exit status, stderr)`` of ``labdct-live ARGV`` run in-process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    return code, capsys.readouterr().err


def error_line(code: int, err: str, command: str) -> str:
    """The one error line of a failed command (asserting there is exactly one)."""
    assert code != 0
    assert "Traceback" not in err, err
    lines = [line for line in re.split(r"[\r\n]+", err) if line.strip()]
    lines = [line for line in lines if not _PROGRESS.search(line)]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"labdct-live {command}: error: "), lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its content."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden_leftovers(folder: Path) -> list[str]:
    """Temporary files or folders (``.NAME.*``) left in ``folder``."""
    return sorted(p.name for p in folder.iterdir()
                  if p.name.startswith(".") and p.name != OUTPUT_MARKER)


def _frames(seed: int = 0) -> np.ndarray:
    """Poisson background with a few Gaussian spots per frame."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:SHAPE[0], :SHAPE[1]]
    frames = rng.poisson(100, (N_FRAMES, *SHAPE)).astype(np.float64)
    for frame in frames:
        for r, c in rng.uniform(8, SHAPE[0] - 8, (3, 2)):
            frame += 400 * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / 4.0)
    return frames.astype(np.uint16)


@pytest.fixture
def scan(tmp_path) -> Path:
    """``scan/frames/img_K.tif`` (11 frames of 64x64) beside ``scan/notes.txt``."""
    folder = tmp_path / "scan" / "frames"
    folder.mkdir(parents=True)
    for i, frame in enumerate(_frames()):
        tifffile.imwrite(folder / f"img_{i}.tif", frame)
    (tmp_path / "scan" / "notes.txt").write_text("the user's notes, next to the frames")
    return tmp_path / "scan"


@pytest.fixture
def masks(tmp_path, scan, capsys) -> Path:
    """A segmentation of ``scan/frames`` (a folder written by labdct-live, with its marker)."""
    out = tmp_path / "masks"
    assert main(["segment", str(scan / "frames"), str(out), "--method", "routine"]) == 0
    capsys.readouterr()
    return out


@pytest.fixture
def meta_file(tmp_path) -> Path:
    """Export metadata for the 11 frames of ``scan``."""
    geometry = Geometry(lss=13.0, lsd=12.5, detector_shape=SHAPE, pixel_size=0.05,
                        center=(32.0, 32.0), beamstop=(30, 33, 30, 33), omega_start=0.0,
                        omega_step=36.0, n_projections=N_FRAMES)
    path = tmp_path / "meta.json"
    path.write_text(json.dumps({"geometry": geometry.to_dict(),
                                "omegas": [36.0 * k for k in range(N_FRAMES)]}))
    return path


@pytest.fixture
def blocker(tmp_path) -> Path:
    """A regular file: any output path under it cannot be created (even by root)."""
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


# ------------------------------------------------------------- 2b: outputs that hit inputs
def _overlap_cases():
    """(command, argv builder, what must survive) for outputs that are, hold or lie in an
    input."""
    return {
        # The reported case: OUTPUT_DIR is the parent of INPUT_DIR.
        "segment-parent": ("segment", lambda t, s, m, meta:
                           ["segment", s / "frames", s, "--overwrite"], "scan"),
        "segment-inside": ("segment", lambda t, s, m, meta:
                           ["segment", s / "frames", s / "frames" / "masks"], "scan"),
        "segment-symlink": ("segment", lambda t, s, m, meta:
                            ["segment", s / "frames", _link(t / "link", s / "frames"),
                             "--overwrite"], "scan"),
        "denoise-parent": ("denoise", lambda t, s, m, meta:
                           ["denoise", s / "frames", s, "--overwrite"], "scan"),
        # export's output is its own (marked) input folder.
        "export-same": ("export", lambda t, s, m, meta:
                        ["export", m, "--meta", meta, "--format", "gm3d", "--out", m,
                         "--overwrite"], "masks"),
        "evaluate-truth": ("evaluate", lambda t, s, m, meta:
                           ["evaluate", "--truth", s / "frames", "--pred", m, "--out",
                            s / "frames"], "scan"),
        "synth-background": ("synth", lambda t, s, m, meta:
                             ["synth", "--pairs", "1", "--background-stack", s / "frames",
                              "--out", s], "scan"),
        "train-cache": ("train", lambda t, s, m, meta:
                        ["train", "--data", "on-the-fly", "--cache", s / "frames", "--out", s],
                        "scan"),
    }


def _link(link: Path, target: Path) -> Path:
    link.symlink_to(target, target_is_directory=True)
    return link


@pytest.mark.parametrize("case", sorted(_overlap_cases()))
def test_output_overlapping_an_input_is_refused(case, tmp_path, scan, masks, meta_file,
                                                capsys):
    command, argv, kept = _overlap_cases()[case]
    argv = argv(tmp_path, scan, masks, meta_file)
    before = snapshot(tmp_path / kept)
    line = error_line(*run_cli(argv, capsys), command)
    assert "input" in line
    assert snapshot(tmp_path / kept) == before  # every input file is still there, unchanged
    assert hidden_leftovers(tmp_path) == [] and hidden_leftovers(tmp_path / kept) == []


@pytest.mark.parametrize("command", ["segment", "simulate", "compare"])
def test_overwrite_replaces_only_folders_labdct_live_wrote(command, tmp_path, scan, capsys):
    ref = tmp_path / "ref.h5"
    h5py.File(ref, "w").close()
    argv = {"segment": lambda out: ["segment", scan / "frames", out],
            "simulate": lambda out: ["simulate", "--sample", "D18", "--projections", "1",
                                     "--out", out],
            "compare": lambda out: ["compare", ref, ref, "--out", out]}[command]
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    line = error_line(*run_cli(argv(user) + ["--overwrite"], capsys), command)
    assert str(user) in line and "not written by labdct-live" in line and OUTPUT_MARKER in line
    assert snapshot(user) == {"thesis.tex": b"years of work"}
    assert hidden_leftovers(tmp_path) == []
    if command != "segment":
        return
    out = tmp_path / "out"
    assert main([str(a) for a in argv(out)]) == 0
    marker = json.loads((out / OUTPUT_MARKER).read_text())
    assert marker["command"] == "segment" and marker["version"] and marker["created"]
    (out / "stale.txt").write_text("from an earlier run")
    assert main([str(a) for a in argv(out)] + ["--overwrite"]) == 0  # its own folder: replaced
    assert not (out / "stale.txt").exists() and (out / "spots.csv").is_file()
    capsys.readouterr()


# ----------------------------------------------------------------- 5: unwritable outputs
def _unwritable_argv(command: str, out: Path, tmp_path: Path, scan: Path,
                     meta_file: Path) -> list:
    empty_h5 = tmp_path / "empty.h5"
    h5py.File(empty_h5, "w").close()
    return {
        "segment": ["segment", scan / "frames", out],
        "denoise": ["denoise", scan / "frames", out],
        "simulate": ["simulate", "--sample", "D18", "--projections", "1", "--out", out],
        "evaluate": ["evaluate", "--truth", scan / "frames", "--pred", scan / "frames",
                     "--out", out],
        "tune": ["tune", "--truth", scan, "--out", out / "tuned.json"],
        "demo": ["demo", "--projections", "2", "--detector", "64", "64", "--out", out],
        "export": ["export", scan / "frames", "--meta", meta_file, "--format", "gm3d",
                   "--out", out],
        "compare": ["compare", empty_h5, empty_h5, "--out", out],
        "synth": ["synth", "--pairs", "1", "--out", out],
        "train": ["train", "--data", "on-the-fly", "--cache", scan / "frames", "--out", out],
        "worker": ["worker", "--catalog", "http://127.0.0.1:9", "--spool", out],
    }[command]


UNWRITABLE = ["segment", "denoise", "simulate", "evaluate", "tune", "demo", "export",
              "compare", "synth", "train", "worker"]


@pytest.mark.parametrize("command", UNWRITABLE)
def test_output_under_a_file_is_one_line(command, tmp_path, scan, meta_file, blocker, capsys):
    out = blocker / "out"
    line = error_line(*run_cli(_unwritable_argv(command, out, tmp_path, scan, meta_file),
                               capsys), command)
    assert f"cannot write {blocker}" in line and "Not a directory" in line
    assert blocker.read_text() == "not a folder" and hidden_leftovers(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o500 folder anyway")
@pytest.mark.parametrize("command", ["segment", "simulate", "evaluate", "tune", "demo"])
def test_output_in_a_read_only_folder_is_one_line(command, tmp_path, scan, meta_file, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = error_line(*run_cli(_unwritable_argv(command, locked / "out", tmp_path, scan,
                                                    meta_file), capsys), command)
        assert f"cannot write {locked / 'out'}" in line and "Permission denied" in line
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def _mount_tmpfs(mount: Path, options: str) -> None:
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
                            capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.decode().strip()}")


@pytest.fixture
def read_only_disk(tmp_path):
    """A read-only tmpfs (needs mount rights; skipped otherwise): EROFS even for root."""
    mount = tmp_path / "ro"
    _mount_tmpfs(mount, "ro,size=16k")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("command", ["segment", "simulate", "evaluate", "tune", "demo"])
def test_output_on_a_read_only_file_system_is_one_line(command, tmp_path, scan, meta_file,
                                                       read_only_disk, capsys):
    out = read_only_disk / "out"
    line = error_line(*run_cli(_unwritable_argv(command, out, tmp_path, scan, meta_file),
                               capsys), command)
    assert f"cannot write {out}" in line and "Read-only file system" in line


# ---------------------------------------------------------------------------- disk full
def test_simulate_refuses_up_front_when_the_disk_is_too_small(tmp_path, monkeypatch, capsys):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: real(path)._replace(free=1_000_000))
    out = tmp_path / "sim"
    line = error_line(*run_cli(["simulate", "--sample", "D18", "--projections", "3",
                                "--out", out], capsys), "simulate")
    assert f"cannot write {out}" in line and "not enough free disk space" in line
    assert "1.0 MB free" in line
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A 16 kB tmpfs (needs root and mount rights; skipped otherwise)."""
    mount = tmp_path / "disk"
    _mount_tmpfs(mount, "size=16k")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("command", ["segment", "simulate"])
def test_full_disk_is_one_line_and_leaves_nothing(command, tiny_disk, scan, capsys):
    out = tiny_disk / "out"
    argv = {"segment": ["segment", scan / "frames", out],
            "simulate": ["simulate", "--sample", "D18", "--projections", "1", "--out", out]}
    line = error_line(*run_cli(argv[command], capsys), command)
    assert f"cannot write {out}" in line
    assert ("No space left on device" in line) if command == "segment" else \
        ("not enough free disk space" in line)
    assert list(tiny_disk.iterdir()) == []


# --------------------------------------------------------------------- bad checkpoints
def _checkpoint(kind: str, path: Path) -> Path:
    import torch

    valid = {"format": "labdct-live-checkpoint", "format_version": 1,
             "architecture": {"name": "compact_tiny", "config": {}}, "state_dict": {}}
    content = {"list": [1, 2, 3],
               "architecture-string": {**valid, "architecture": "compact_tiny"},
               "state-dict-list": {**valid, "state_dict": [1.0, 2.0]}}[kind]
    torch.save(content, path)
    return path


@pytest.mark.parametrize("kind", ["list", "architecture-string", "state-dict-list"])
@pytest.mark.parametrize("command", ["denoise", "segment-dl"])
def test_malformed_checkpoint_is_one_line(command, kind, tmp_path, scan, capsys):
    model = _checkpoint(kind, tmp_path / "model.pt")
    out = tmp_path / "out"
    argv = {"denoise": ["denoise", scan / "frames", out, "--model", model],
            "segment-dl": ["segment", "--method", "dl", "--model", model, scan / "frames", out]}
    line = error_line(*run_cli(argv[command], capsys), command.split("-")[0])
    assert str(model) in line
    assert {"list": "not a labdct-live checkpoint", "architecture-string": "'architecture'",
            "state-dict-list": "'state_dict'"}[kind] in line
    assert not out.exists() and hidden_leftovers(tmp_path) == []


# -------------------------------------------------------------------------- the catalog
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _catalog_argv(command: str, uri: str, tmp_path: Path) -> list:
    return {"worker": ["worker", "--catalog", uri, "--api-key", "secret"],
            "replay": ["replay", "--catalog", uri, "--api-key", "secret", "a5de6950"],
            "export": ["export", "--from-catalog", "a5de6950", "--catalog", uri, "--api-key",
                       "secret", "--format", "gm3d", "--out", tmp_path / "out"]}[command]


@pytest.mark.parametrize("command", ["worker", "replay", "export"])
def test_unreachable_catalog_is_one_line_at_once(command, tmp_path, capsys):
    uri = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    line = error_line(*run_cli(_catalog_argv(command, uri, tmp_path), capsys), command)
    assert time.monotonic() - t0 < 10  # tiled alone retries for ~26 s
    assert f"the catalog at {uri} is unreachable" in line
    assert list(tmp_path.iterdir()) == []


class _KeyRefusingTiled(http.server.BaseHTTPRequestHandler):
    """Answers like a tiled server that does not accept the API key."""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/healthz" else 401)
        self.end_headers()
        self.wfile.write(b'{"status": "ready"}' if self.path == "/healthz" else b"{}")

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def refusing_catalog():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KeyRefusingTiled)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.mark.parametrize("command", ["worker", "replay", "export"])
def test_refused_api_key_is_told_apart(command, refusing_catalog, tmp_path, capsys):
    line = error_line(*run_cli(_catalog_argv(command, refusing_catalog, tmp_path), capsys),
                      command)
    assert f"the catalog at {refusing_catalog} refused the API key" in line
    assert "unreachable" not in line and list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """A real embedded tiled catalog with three run-like nodes (two share a prefix)."""
    from labdct_live.catalog.server import CatalogServer

    with CatalogServer(tmp_path_factory.mktemp("catalog")) as server:
        client = server.client()
        for key in ("a5de6950-1111-4000-8000-000000000001",
                    "a5de6950-2222-4000-8000-000000000002",
                    "0c1b2a39-3333-4000-8000-000000000003"):
            client.create_container(key=key, metadata={"start": {"uid": key}})
        yield server


def test_replay_resolves_a_unique_uid_prefix(catalog, capsys):
    from labdct_live.live.replay import RunNotFound, resolve_run_uid

    client = catalog.client()
    assert resolve_run_uid(client, "0c1b") == "0c1b2a39-3333-4000-8000-000000000003"
    assert resolve_run_uid(client, "a5de6950-2") == "a5de6950-2222-4000-8000-000000000002"
    full = "a5de6950-1111-4000-8000-000000000001"
    assert resolve_run_uid(client, full) == full
    with pytest.raises(RunNotFound, match="matches 2 runs"):
        resolve_run_uid(client, "a5de6950")
    # Through the command: one line listing the candidates, or saying none matched.
    line = error_line(*run_cli(["replay", "--catalog", catalog.uri, "--api-key",
                                catalog.api_key, "a5de6950"], capsys), "replay")
    assert "matches 2 runs" in line and "a5de6950-1111" in line and "a5de6950-2222" in line
    line = error_line(*run_cli(["replay", "--catalog", catalog.uri, "--api-key",
                                catalog.api_key, "ffff"], capsys), "replay")
    assert "no run whose uid starts with 'ffff'" in line


# ------------------------------------------------------------------- files that are not HDF5
@pytest.mark.parametrize("which", ["compare-reference", "compare-reconstruction", "train-data"])
def test_file_that_is_not_hdf5_is_named(which, tmp_path, capsys):
    good, junk = tmp_path / "good.h5", tmp_path / "junk.h5"
    h5py.File(good, "w").close()
    junk.write_bytes(b"this is not HDF5\n" * 10)
    argv = {"compare-reference": ["compare", junk, good, "--out", tmp_path / "out"],
            "compare-reconstruction": ["compare", good, junk, "--out", tmp_path / "out"],
            "train-data": ["train", "--data", junk, "--out", tmp_path / "out"]}[which]
    line = error_line(*run_cli(argv, capsys), which.split("-")[0])
    assert f"{junk} is not an HDF5 file" in line
    assert not (tmp_path / "out").exists() and hidden_leftovers(tmp_path) == []


# ------------------------------------------------------------------- absurd option values
@pytest.mark.parametrize("argv, command, named", [
    (["segment", "--method", "dl", "--threshold", "-1", "{frames}", "{out}"], "segment",
     "--threshold -1 is outside the U-Net's output range [0, 1)"),
    (["segment", "--method", "dl", "--threshold", "1.5", "{frames}", "{out}"], "segment",
     "--threshold 1.5 is outside"),
    # The reported command: four values would swallow the positional folders.
    (["segment", "--beamstop", "544", "1496", "526", "1487", "{frames}", "{out}"], "segment",
     "argument --beamstop: expected ROW0,ROW1,COL0,COL1"),
    (["segment", "--beamstop", "0,99,0,3", "{frames}", "{out}"], "segment",
     "--beamstop 0,99,0,3 is outside the 64x64 frames"),
    (["compare", "{h5}", "{h5}", "--labels", "a,b", "--out", "{out}"], "compare",
     "--labels: give 1 names, got 2"),
])
def test_absurd_option_value_is_refused(argv, command, named, tmp_path, scan, capsys):
    h5 = tmp_path / "map.h5"
    h5py.File(h5, "w").close()
    values = {"frames": scan / "frames", "out": tmp_path / "out", "h5": h5}
    line = error_line(*run_cli([a.format(**values) for a in argv], capsys), command)
    assert named in line
    assert not (tmp_path / "out").exists() and hidden_leftovers(tmp_path) == []


def test_options_never_swallow_the_positionals():
    from labdct_live.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["segment", "--beamstop", "544,1496,526,1487", "IN", "OUT"])
    assert args.beamstop == (544, 1496, 526, 1487) and (args.input_dir, args.output_dir) == (
        "IN", "OUT")
    assert parser.parse_args(["segment", "--beamstop", "none", "IN", "OUT"]).beamstop == "none"
    args = parser.parse_args(["compare", "--labels", "routine,U-Net", "REF", "REC", "--second",
                              "S", "--out", "D"])
    assert args.labels == ["routine", "U-Net"] and (args.reference, args.reconstruction) == (
        "REF", "REC")
    args = parser.parse_args(["export", "--format", "gm3d", "--out", "D", "SRC"])
    assert args.source == "SRC"


# --------------------------------------------------------------- what the masks carry along
def test_masks_keep_the_frames_orientation_and_resolution(tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    data = _frames()
    for i, frame in enumerate(data):  # Orientation 3: shown rotated by 180 degrees
        tifffile.imwrite(frames / f"img_{i}.tif", frame, extratags=[(274, "H", 1, 3, True)],
                         resolution=(200.0, 200.0), resolutionunit="CENTIMETER")
    tifffile.imwrite(frames / "stack.tif", data[:3], photometric="minisblack",
                     extratags=[(274, "H", 1, 3, True)])
    assert main(["segment", str(frames), str(tmp_path / "out")]) == 0
    capsys.readouterr()
    for name in ("img_0.tif", "stack.tif"):
        with tifffile.TiffFile(tmp_path / "out" / name) as tif:
            assert tif.pages[0].tags[274].value == 3, name
    with tifffile.TiffFile(tmp_path / "out" / "img_0.tif") as tif:
        assert tif.pages[0].resolution == pytest.approx((200.0, 200.0))


def test_segmentation_json_names_the_shipped_model(tmp_path, scan, capsys):
    from labdct_live.models import pretrained_path

    out = tmp_path / "out"
    assert main(["segment", "--method", "dl", str(scan / "frames"), str(out)]) == 0
    capsys.readouterr()
    settings = json.loads((out / "segmentation.json").read_text())
    assert settings["model_name"] == "compact_s4"
    assert settings["model_hash"] == hashlib.sha256(pretrained_path().read_bytes()).hexdigest()
