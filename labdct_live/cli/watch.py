"""``labdct-live watch``: follow a run in the catalog, one line (and a PNG) per change."""

from __future__ import annotations

import argparse

from labdct_live.cli import CLIError

ORDER = 45


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "watch", help="follow a run live: frames processed, SNR, grain-map updates",
        description="Follows the run UID in the tiled catalog at URI: prints one line each "
                    "time more frames are processed or the grain map gets an update, and "
                    "keeps --png up to date (latest frame, its segmentation, the SNR trace, "
                    "a slice of the grain map). Ends when processing and the grain map are "
                    "complete, or after --timeout. The catalog is polled.")
    p.add_argument("catalog", metavar="URI", help="tiled server URI, e.g. http://127.0.0.1:8000")
    p.add_argument("--run", required=True, metavar="UID", help="the raw run's uid")
    p.add_argument("--api-key", default=None, help="API key (default: $TILED_API_KEY)")
    p.add_argument("--png", metavar="PATH", help="keep the latest figure in this PNG file")
    p.add_argument("--interval", type=float, default=2.0, metavar="S",
                   help="seconds between polls (default: 2)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="stop after this many seconds, exit status 1 (default: wait until "
                        "the run is finished)")
    p.add_argument("--once", action="store_true",
                   help="read one snapshot, write --png, print its line and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from labdct_live.io.names import check_key

    uid = check_key(args.run, "--run")  # before any request: a bad uid never reaches tiled
    if args.interval <= 0 or (args.timeout is not None and args.timeout < 0):
        raise CLIError("--interval must be > 0 s and --timeout >= 0 s")
    if args.png is not None and not Path(args.png).parent.is_dir():
        raise CLIError(f"--png {args.png}: the folder {Path(args.png).parent} does not exist")

    from labdct_live.catalog.client import connect
    from labdct_live.live.viewer import read_snapshot, save_png, watch

    client = connect(args.catalog, args.api_key)
    try:
        if args.once:
            snapshot = read_snapshot(client, uid)
            if args.png is not None:
                save_png(snapshot, args.png)
            print(snapshot.summary(), flush=True)
        else:
            snapshot = watch(client, uid, interval=args.interval, png=args.png,
                             timeout=args.timeout,
                             on_snapshot=lambda s: print(s.summary(), flush=True))
    except LookupError as exc:
        raise CLIError(str(exc)) from None
    if not args.once and not snapshot.finished:  # --timeout passed: say so, exit 1
        print(f"timeout: run {uid[:8]} not finished after {args.timeout:g} s", flush=True)
        return 1
    return 0
