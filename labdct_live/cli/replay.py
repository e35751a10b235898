"""``labdct-live replay``: re-process a stored run from the catalog."""

from __future__ import annotations

import argparse

ORDER = 40


def run(args: argparse.Namespace) -> int:
    from labdct_live.catalog.client import connect
    from labdct_live.live.replay import replay_run

    client = connect(args.catalog, args.api_key)
    result = replay_run(client, args.raw_uid, method=args.method)
    for key, value in result.summary().items():
        print(f"{key:24s} {value}")
    return 0 if not result.processor.errors else 1


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "replay", help="re-process a past run from the catalog",
        description="Replays a raw run's documents from a tiled catalog through the live "
                    "processor into processed/<uid>-replay-<time>, and reports the agreement "
                    "with the run's original processing.")
    p.add_argument("raw_uid", help="uid (or unique prefix) of the raw run")
    p.add_argument("--catalog", required=True, help="tiled server URI, e.g. http://127.0.0.1:8000")
    p.add_argument("--api-key", default=None, help="API key (default: $TILED_API_KEY)")
    p.add_argument("--method", choices=["auto", "dl", "routine"], default="routine")
    p.set_defaults(func=run)
