"""``labdct-live serve``: serve an embedded catalog folder (e.g. the demo's) until Ctrl-C.

The folder keeps its API key across restarts, so clients (a running scan) carry on after
``serve`` is restarted. One server per folder: a second ``serve`` of a served folder fails.
SIGTERM or SIGHUP stop the server like Ctrl-C; if ``serve`` is killed, the server stops too.
"""

from __future__ import annotations

import argparse
import time

ORDER = 60


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from labdct_live.catalog.server import CatalogServer, Terminated, stop_on_signals
    from labdct_live.io.output import probe_writable

    directory = Path(args.directory)
    if not (directory / "catalog.db").exists() and not args.create:
        raise FileNotFoundError(f"{directory} holds no catalog (catalog.db); pass --create to "
                                "start a new one")
    probe_writable(directory / "catalog.db")  # a clear error now, not one from the server
    raw = [args.raw] if args.raw else [directory.parent / "raw"]
    with stop_on_signals(), CatalogServer(directory, readable_storage=raw,
                                          port=args.port) as server:
        print(f"tiled catalog {directory} at {server.uri}")
        print(f"API key: {server.api_key}")
        print(f"  from tiled.client import from_uri; c = from_uri('{server.uri}', "
              f"api_key='{server.api_key}')", flush=True)
        try:
            while server.running:
                time.sleep(1)
        except (KeyboardInterrupt, Terminated):  # asked to stop: a clean stop, status 0
            pass
    return 0


def _port(text: str) -> int:
    """``--port`` value: a TCP port number."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port 1-65535, got {text!r}")
    return port


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve an embedded catalog folder",
                              description=__doc__)
    p.add_argument("directory", help="catalog folder (e.g. out/demo/catalog)")
    p.add_argument("--raw", default=None, help="folder of raw detector files (default ../raw)")
    p.add_argument("--port", type=_port, default=None,
                   help="TCP port, 1-65535 (default: a free one)")
    p.add_argument("--create", action="store_true", help="create the catalog if missing")
    p.set_defaults(func=run)
