"""``labdct-live import-spool``: write what a catalog that stayed away never received."""

from __future__ import annotations

import argparse

ORDER = 62


def run(args: argparse.Namespace) -> int:
    from labdct_live.catalog.client import connect
    from labdct_live.live.spool_import import import_spool

    report = import_spool(connect(args.catalog, args.api_key), args.spool)
    for uid in report["raw_runs"]:
        print(f"raw run {uid} written")
    for node, status in report["processed"].items():
        print(f"processed/{node} written ({status})")
    for path in report["left"]:
        print(f"still waiting: {path} (is the catalog up?)")
    if not (report["raw_runs"] or report["processed"] or report["left"]):
        print(f"nothing waits in {args.spool}")
    return 1 if report["left"] else 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import-spool", help="write spooled raw runs and results to the catalog",
        description="When the catalog stayed away during a scan, the session kept the raw "
                    "run's documents and the processed results on disk, in its spool folder "
                    "(WORKDIR/spool). Once the catalog is back, this writes them to it.")
    p.add_argument("spool", metavar="SPOOL_DIR", help="the spool folder, e.g. out/demo/spool")
    p.add_argument("--catalog", required=True, help="tiled server URI")
    p.add_argument("--api-key", default=None, help="API key (default: $TILED_API_KEY)")
    p.set_defaults(func=run)
