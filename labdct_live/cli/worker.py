"""``labdct-live worker`` and ``labdct-live proxy``: live processing in another process."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

ORDER = 50

logger = logging.getLogger("labdct_live.worker")


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _curve_dir(args: argparse.Namespace) -> str | None:
    from labdct_live.live.addresses import CURVE_DIR_ENV

    return args.curve_dir or os.environ.get(CURVE_DIR_ENV) or None


class _RunLog:
    """Logs each run's start and stop, with the dispatcher's counts: the operator's view."""

    def __init__(self, dispatcher):
        self.dispatcher = dispatcher

    def __call__(self, name: str, doc: dict) -> None:
        if name not in ("start", "stop"):
            return
        uid = doc.get("uid") if name == "start" else doc.get("run_start")
        counts = self.dispatcher.counts
        logger.info("labdct-live worker: run %s %s (%d documents accepted, %d rejected so far)",
                    uid, "started" if name == "start" else "ended", counts["accepted"],
                    counts["rejected"])


def run_worker(args: argparse.Namespace) -> int:
    from labdct_live.callbacks.live import LiveConfig, live_router
    from labdct_live.catalog.client import connect
    from labdct_live.io.output import probe_writable
    from labdct_live.live.addresses import endpoint, is_loopback
    from labdct_live.live.remote import make_dispatcher

    curve = _curve_dir(args)
    if args.spool is not None:  # a spool that can never be written is a mistake, say it now
        probe_writable(Path(args.spool) / "run")
    dispatcher = make_dispatcher(args.zmq, curve=curve)  # a bad address fails before the catalog
    try:
        config = LiveConfig(client=connect(args.catalog, args.api_key), method=args.method,
                            spool_dir=args.spool, queue_size=args.queue_size)
    except BaseException:
        dispatcher.close()
        raise
    dispatcher.subscribe(_RunLog(dispatcher))
    dispatcher.subscribe(live_router(config))
    logging.getLogger("labdct_live").setLevel(logging.INFO)
    if curve is None and not is_loopback(endpoint(args.zmq)):
        logger.warning("labdct-live worker: no CURVE keys for a proxy on another host: whoever "
                       "reaches it can feed this worker (see docs/security.md)")
    signal.signal(signal.SIGTERM, lambda *_: dispatcher.stop())
    print(f"labdct-live worker: documents from {dispatcher.address} "
          f"(CURVE {'on' if curve else 'off'}), results to {args.catalog}", flush=True)
    try:
        dispatcher.start()
    except KeyboardInterrupt:
        pass
    counts = dispatcher.counts
    print(f"labdct-live worker: stopped; {counts['accepted']} documents accepted, "
          f"{counts['rejected']} rejected, {counts['callback_errors']} callback errors",
          flush=True)
    return 0


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def run_proxy(args: argparse.Namespace) -> int:
    from labdct_live.live.remote import make_proxy

    curve = _curve_dir(args)
    proxy = make_proxy(args.input, args.output, curve=curve, insecure=args.insecure)
    # SIGTERM unwinds like Ctrl-C, so the sockets and the authenticator thread are closed
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"labdct-live proxy: {proxy.in_address} -> {proxy.out_address} "
          f"(CURVE {'on' if curve else 'off'})", flush=True)
    try:
        proxy.start()
    except KeyboardInterrupt:
        pass
    return 0


def register(subparsers) -> None:
    from labdct_live.live.addresses import CURVE_DIR_ENV, DEFAULT_IN, DEFAULT_OUT

    curve_help = (f"CURVE folder (default: ${CURVE_DIR_ENV}); see `labdct-live keys` and "
                  "docs/security.md")
    p = subparsers.add_parser(
        "worker", help="process scans published over 0MQ",
        description="Subscribes to a labdct-live 0MQ proxy (msgpack, never pickle) and "
                    "processes every run into the catalog. Start it before the scan.")
    p.add_argument("--zmq", default=DEFAULT_OUT,
                   help=f"proxy output HOST:PORT (default {DEFAULT_OUT})")
    p.add_argument("--catalog", required=True, help="tiled server URI")
    p.add_argument("--api-key", default=None, help="API key (default: $TILED_API_KEY)")
    p.add_argument("--method", choices=["auto", "dl", "routine"], default="auto")
    p.add_argument("--spool", default=None, help="spool directory (default: a temporary one)")
    p.add_argument("--queue-size", type=positive_int, default=16,
                   help="frames held in memory before spooling to disk (default 16)")
    p.add_argument("--curve-dir", default=None,
                   help=f"{curve_help}; holds client.key_secret and server.key")
    p.set_defaults(func=run_worker)

    p = subparsers.add_parser(
        "proxy", help="forward documents from publishers to workers (localhost by default)",
        description="Binds an input for publishers and an output for workers. Binding a "
                    "non-loopback address needs --curve-dir (or --insecure).")
    p.add_argument("--input", default=DEFAULT_IN,
                   help=f"publishers connect here (default {DEFAULT_IN})")
    p.add_argument("--output", default=DEFAULT_OUT,
                   help=f"workers subscribe here (default {DEFAULT_OUT})")
    p.add_argument("--curve-dir", default=None,
                   help=f"{curve_help}; holds server.key_secret and clients/")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback bind without CURVE (a trusted network only)")
    p.set_defaults(func=run_proxy)
