"""``labdct-live demo``: the main job. A simulated LabDCT scan processed live into a catalog.

Starts an embedded tiled catalog, runs a simulated scan with the real RunEngine (raw run via
TiledWriter), segments every projection as it arrives into ``processed/<uid>``, advises the
exposure, exports the binarised scan for reconstruction, and prints where everything is.
"""

from __future__ import annotations

import argparse
import time

ORDER = 0


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..io import work_folder
    from ..plans import labdct_scan
    from ..session import LiveSession

    if args.projections < 2:
        raise ValueError(f"--projections must be at least 2, got {args.projections}")
    step = 360.0 / (args.projections - 1)
    t0 = time.perf_counter()
    print(f"labdct-live demo: {args.projections} projections of {args.sample}, "
          f"method {args.method}, work folder {args.out}")
    with work_folder(args.out), LiveSession(args.out, method=args.method,
                                             target_snr=args.target_snr,
                                             report=tqdm.write) as session:
        detector, rotation = session.simulated_instrument(
            args.sample, seed=args.seed, detector_shape=args.detector, exposure=args.exposure)
        bar = tqdm(total=args.projections, desc="scan", unit="frame")
        session.RE.subscribe(lambda name, doc: bar.update(1) if name == "event" else None)
        (uid,) = session.RE(labdct_scan(detector, rotation, start=-180.0, stop=180.0, step=step,
                                        exposure=args.exposure, md={"purpose": "demo"}))
        bar.close()
        print("scan finished; waiting for the processing to catch up ...")
        session.wait()
        processor = session.processors[-1]
        elapsed = time.perf_counter() - t0
        node = session.client["processed"][uid]
        frames = node["frames"].read()
        print(f"\nDone in {elapsed:.0f} s. Run {uid}")
        print(f"  frames in {processor.counts['received']}, processed "
              f"{processor.counts['processed']}, failed {processor.counts['failed']}, "
              f"spooled {processor.counts['spooled_inbox']}; method {node.metadata['method']}")
        print(f"  spots per frame {frames.n_spots.mean():.0f} (mean), median spot SNR "
              f"{frames.snr_p50.median():.2f}; advised exposure "
              f"{session.monitor.advice or float('nan'):.3g} s for SNR {args.target_snr:g}")
        print(f"  catalog      {session.workdir / 'catalog'}  (raw run: {uid}; "
              f"results: processed/{uid})")
        for fmt, path in session.end_of_scan.results.get(uid, {}).get("exports", {}).items():
            print(f"  export {fmt:9s} {path}")
        if session.monitor.saved:
            print(f"  SNR monitor  {session.monitor.saved}")
        print("\nLook at it again later:")
        print(f"  labdct-live serve {session.workdir / 'catalog'}   # prints URI and API key")
        print("  python -c \"from tiled.client import from_uri; c = from_uri(URI, api_key=KEY); "
              f"print(c['processed']['{uid}']['frames'].read())\"")
    return 0


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
    p.set_defaults(func=run)
