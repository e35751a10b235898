"""``labdct-live demo``: the main job. A simulated LabDCT scan processed live into a catalog.

Starts an embedded tiled catalog, runs a simulated scan with the real RunEngine (raw run via
TiledWriter), segments every projection as it arrives into ``processed/<uid>``, advises the
exposure, exports the binarised scan for reconstruction, and prints where everything is.
"""

from __future__ import annotations

import argparse
import logging
import time

ORDER = 0


def run(args: argparse.Namespace) -> int:
    from bluesky.utils import RunEngineInterrupted
    from tqdm.auto import tqdm

    from labdct_live.acquisition.plans import labdct_scan
    from labdct_live.catalog.server import stop_on_signals
    from labdct_live.io.output import work_folder
    from labdct_live.live.session import LiveSession

    if args.projections < 2:
        raise ValueError(f"--projections must be at least 2, got {args.projections}")
    step = 360.0 / (args.projections - 1)
    t0 = time.perf_counter()
    print(f"labdct-live demo: {args.projections} projections of {args.sample}, "
          f"method {args.method}, work folder {args.out}")
    with stop_on_signals(), work_folder(args.out), LiveSession(args.out, method=args.method,
                                             target_snr=args.target_snr,
                                             report=tqdm.write,
                                             outage_limit=args.outage_limit) as session:
        detector, rotation = session.simulated_instrument(
            args.sample, seed=args.seed, detector_shape=args.detector, exposure=args.exposure)
        bar = tqdm(total=args.projections, desc="scan", unit="frame")
        session.RE.subscribe(lambda name, doc: bar.update(1) if name == "event" else None)
        interrupted = False
        try:
            session.RE(labdct_scan(detector, rotation, start=-180.0, stop=180.0, step=step,
                                   exposure=args.exposure, md={"purpose": "demo"}))
        except RunEngineInterrupted:  # Ctrl-C: bluesky paused the scan; end it for good
            interrupted = True
            bar.close()
            print("\ninterrupted: aborting the scan; processing what it took ...")
            bluesky_log = logging.getLogger("bluesky")
            level = bluesky_log.level
            bluesky_log.setLevel(logging.CRITICAL)  # its "Run aborted" traceback says nothing
            try:
                session.RE.abort("interrupted by the user (Ctrl-C)")
            finally:
                bluesky_log.setLevel(level)
        bar.close()
        print("scan over; waiting for the processing to catch up ...")
        try:
            complete = session.wait()
        except KeyboardInterrupt:  # Ctrl-C while waiting: stop the processing cleanly
            interrupted, complete = True, False
            print("\ninterrupted: stopping the processing (the raw run keeps every frame) ...")
            for processor in session.processors:
                processor.cancel("interrupted by the user (Ctrl-C)")
            session.wait(60.0)
        _report(session, time.perf_counter() - t0, args.target_snr)
        if interrupted:
            session.close(10.0)  # do not wait long for work the user asked to stop
    if interrupted:
        return 130
    return 0 if complete else 1


def _report(session, elapsed: float, target_snr: float) -> None:
    """Where everything is, and what is missing and why."""
    if not session.processors:
        print("no run was started")
        return
    processor = session.processors[-1]
    uid, counts = processor.raw_uid, processor.counts
    print(f"\nDone in {elapsed:.0f} s. Run {uid}: {processor.status}")
    print(f"  frames in {counts['received']}, processed {counts['processed']}, failed "
          f"{counts['failed']}, read back from the raw run {counts['backfilled']}, missing "
          f"{counts['missing']}; spooled {counts['spooled_inbox']}")
    for message in processor.errors[:10]:
        print(f"  ! {message}")
    if processor.results_complete and counts["processed"]:
        frames = session.client["processed"][processor.node_key]["frames"].read()
        frames = frames[frames.status == "ok"]
        print(f"  spots per frame {frames.n_spots.mean():.0f} (mean), median spot SNR "
              f"{frames.snr_p50.median():.2f}; advised exposure "
              f"{session.monitor.advice or float('nan'):.3g} s for SNR {target_snr:g}")
        friedel = session.monitor.friedel_summary()
        if friedel["pairs"]:
            print(f"  Friedel pairs {friedel['pairs']}: {friedel['consistent_per_frame']:.0f} "
                  f"consistent spots per frame, share {friedel['share']:.2f} "
                  "(a ground-truth-free score, docs/real-frames.md; near 0 in this "
                  "Laue-focusing geometry, where off-axis grains move the mates: docs/live.md)")
    print(f"  catalog      {session.workdir / 'catalog'}  (raw run: {uid}; "
          f"results: processed/{processor.node_key})")
    for fmt, path in session.end_of_scan.results.get(processor.node_key, {}).get(
            "exports", {}).items():
        print(f"  export {fmt:9s} {path}")
    if session.monitor.saved:
        print(f"  SNR monitor  {session.monitor.saved}")
    spooled = session.raw_writer.spooled_runs if session.raw_writer else []
    if spooled or (processor.writer is not None and processor.writer.pending):
        print(f"\nThe catalog stayed away: what it did not receive waits in {session.spool_dir}."
              "\nOnce it is back:  labdct-live serve "
              f"{session.workdir / 'catalog'}, then\n  labdct-live import-spool "
              f"{session.spool_dir} --catalog URI --api-key KEY")
        return
    print("\nLook at it again later:")
    print(f"  labdct-live serve {session.workdir / 'catalog'}   # prints URI and API key")
    print("  python -c \"from tiled.client import from_uri; c = from_uri(URI, api_key=KEY); "
          f"print(c['processed']['{processor.node_key}']['frames'].read())\"")


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the main job: a simulated scan processed live",
                              description=__doc__)
    p.add_argument("--sample", default="D35", help="preset sample (default D35)")
    p.add_argument("--projections", type=int, default=181,
                   help="projections over 360° (default 181, i.e. 2° steps)")
    p.add_argument("--detector", type=int, nargs=2, metavar=("ROWS", "COLS"), default=None,
                   help="bin the detector to this size (default 2032 2032)")
    p.add_argument("--method", choices=["auto", "dl", "routine"], default="auto",
                   help="processing: the U-Net (dl), the standard routine, or auto (default)")
    p.add_argument("--exposure", type=float, default=1.0, help="exposure per frame, s")
    p.add_argument("--target-snr", type=float, default=4.0, help="exposure advice target")
    p.add_argument("--seed", type=int, default=1, help="sample and noise seed")
    p.add_argument("--out", default="out/demo", help="work folder (default out/demo)")
    p.add_argument("--outage-limit", type=float, default=300.0, metavar="SECONDS",
                   help="how long the catalog may stay away before the demo stops waiting "
                        "for it and leaves what it did not receive in WORKDIR/spool "
                        "(default 300)")
    p.set_defaults(func=run)
