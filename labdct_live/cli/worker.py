"""``labdct-live worker`` and ``labdct-live proxy``: live processing in another process."""

from __future__ import annotations

import argparse
import logging

ORDER = 50


def run_worker(args: argparse.Namespace) -> int:
    from ..callbacks.live import LiveConfig, live_router
    from ..catalog import connect
    from ..remote import make_dispatcher

    config = LiveConfig(client=connect(args.catalog, args.api_key), method=args.method,
                        spool_dir=args.spool, queue_size=args.queue_size)
    dispatcher = make_dispatcher(args.zmq)
    dispatcher.subscribe(live_router(config))
    logging.getLogger("labdct_live").setLevel(logging.INFO)
    print(f"labdct-live worker: documents from {args.zmq}, results to {args.catalog}", flush=True)
    try:
        dispatcher.start()
    except KeyboardInterrupt:
        pass
    return 0


def run_proxy(args: argparse.Namespace) -> int:
    from ..remote import make_proxy

    proxy = make_proxy(args.input, args.output)
    print(f"labdct-live proxy: {args.input} -> {args.output}", flush=True)
    try:
        proxy.start()
    except KeyboardInterrupt:
        pass
    return 0


def register(subparsers) -> None:
    from ..remote import DEFAULT_IN, DEFAULT_OUT

    p = subparsers.add_parser(
        "worker", help="process scans published over 0MQ",
        description="Subscribes to a bluesky 0MQ proxy (msgpack, never pickle) and processes "
                    "every run into the catalog. Start it before the scan.")
    p.add_argument("--zmq", default=DEFAULT_OUT, help=f"proxy output HOST:PORT (default {DEFAULT_OUT})")
    p.add_argument("--catalog", required=True, help="tiled server URI")
    p.add_argument("--api-key", default=None, help="API key (default: $TILED_API_KEY)")
    p.add_argument("--method", choices=["auto", "dl", "routine"], default="auto")
    p.add_argument("--spool", default=None, help="spool directory (default: a temporary one)")
    p.add_argument("--queue-size", type=int, default=16)
    p.set_defaults(func=run_worker)

    p = subparsers.add_parser("proxy", help="run a bluesky 0MQ proxy (localhost by default)")
    p.add_argument("--input", default=DEFAULT_IN, help=f"publishers connect here (default {DEFAULT_IN})")
    p.add_argument("--output", default=DEFAULT_OUT, help=f"workers subscribe here (default {DEFAULT_OUT})")
    p.set_defaults(func=run_proxy)
