"""A live scan into a tiled server backed by PostgreSQL (the facility set-up), not SQLite.

    python benchmarks/check_postgres.py [--projections 37] [--method routine|dl]

Starts a throw-away PostgreSQL cluster (``initdb``/``pg_ctl`` on PATH; run as root, it runs
them as the ``postgres`` user), a plain ``tiled serve config`` whose catalog and table storage
are two databases of it, then a :class:`~labdct_live.live.session.LiveSession` pointed at that
server by URI and API key, as a beamline would. Prints what reached the catalog and the
timings, and exits non-zero when a frame is missing. Not part of CI: it needs a PostgreSQL
server binary.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from labdct_live.acquisition.plans import labdct_scan
from labdct_live.catalog.server import tiled_config_yaml
from labdct_live.live.session import LiveSession


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _start_postgres(root: Path, port: int) -> Path:
    data = root / "pgdata"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    subprocess.run(_as_postgres(["initdb", "-D", str(data), "--auth=trust", "-U", "tiled"]),
                   check=True, capture_output=True)
    subprocess.run(_as_postgres(["pg_ctl", "-D", str(data), "-l", str(root / "postgres.log"),
                                 "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
                                 "-w", "start"]), check=True, capture_output=True)
    for database in ("catalog", "storage"):
        subprocess.run(_as_postgres(["createdb", "-h", "127.0.0.1", "-p", str(port), "-U",
                                     "tiled", database]), check=True, capture_output=True)
    return data


def _start_tiled(root: Path, pg_port: int, raw: Path, api_key: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    config = root / "tiled-config.yml"
    (root / "data").mkdir()
    config.write_text(tiled_config_yaml(
        root, [raw], api_key, "127.0.0.1", port,
        catalog_uri=f"postgresql+asyncpg://tiled@127.0.0.1:{pg_port}/catalog",
        table_uri=f"postgresql://tiled@127.0.0.1:{pg_port}/storage"))
    tiled = Path(sys.executable).with_name("tiled")
    log = open(root / "tiled.log", "ab")
    server = subprocess.Popen([str(tiled), "serve", "config", str(config)], stdout=log,
                              stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"tiled exited; see {root / 'tiled.log'}")
        try:
            if httpx.get(f"{uri}/healthz", timeout=1.0).status_code == 200:
                return server, uri
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"tiled did not answer; see {root / 'tiled.log'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--projections", type=int, default=37)
    ap.add_argument("--method", default="routine", choices=["routine", "dl"])
    ap.add_argument("--detector", type=int, default=512, help="detector rows = columns")
    args = ap.parse_args()
    if shutil.which("initdb") is None:
        print("no PostgreSQL server binaries (initdb) on PATH")
        return 2
    root = Path(tempfile.mkdtemp(prefix="labdct-pg-"))
    pg_port, api_key = _free_port(), secrets.token_hex(16)
    data = _start_postgres(root, pg_port)
    raw = root / "work" / "raw"
    raw.mkdir(parents=True)
    server, ok = None, False
    try:
        server, uri = _start_tiled(root, pg_port, raw, api_key)
        with LiveSession(root / "work", catalog_uri=uri, api_key=api_key, method=args.method,
                         export_formats=()) as session:
            detector, rotation = session.simulated_instrument(
                "D35", detector_shape=(args.detector, args.detector), seed=5)
            step = 360.0 / (args.projections - 1)
            t0 = time.monotonic()
            (uid,) = session.RE(labdct_scan(detector, rotation, step=step, exposure=1.0))
            scan = time.monotonic() - t0
            done = session.wait(600)
            total = time.monotonic() - t0
            node = session.client["processed"][uid]
            frames = node["frames"].read()
            raw_frames = session.client[uid]["primary"]["labdct_image"].read()
            counts = session.processors[0].counts
        n = args.projections
        ok = (done and sorted(frames.frame) == list(range(n)) and raw_frames.shape[0] == n
              and node.metadata["status"] == "complete")
        version = subprocess.run(["postgres", "--version"], capture_output=True,
                                 text=True).stdout.strip()
        print(f"PostgreSQL {version}, "
              f"tiled catalog and tables in PostgreSQL; D35 at {args.detector}², {n} frames, "
              f"method {args.method}")
        print(f"scan {scan:.1f} s ({scan / n:.3f} s/frame), all results in the catalog after "
              f"{total:.1f} s; frames rows {len(frames)}, raw frames {raw_frames.shape[0]}, "
              f"spots {int(frames.n_spots.sum())}, status {node.metadata['status']}; "
              f"counts {counts}")
        print("OK" if ok else "MISSING FRAMES")
        return 0 if ok else 1
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        subprocess.run(_as_postgres(["pg_ctl", "-D", str(data), "-m", "fast", "stop"]),
                       capture_output=True)
        if ok:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logs kept in {root}")


if __name__ == "__main__":
    sys.exit(main())
