"""``labdct-live demo``: the main job. A simulated LabDCT scan processed live into a catalog.

Starts an embedded tiled catalog, runs a simulated scan with the real RunEngine (raw run via
TiledWriter), segments every projection as it arrives into ``processed/<uid>``, advises the
exposure, exports the binarised scan for reconstruction, reconstructs the grain map from the
binary frames and compares it with the simulator's own grain map of the sample (standing in
for a synchrotron DCT reference; ``--no-reconstruct`` skips both), and prints where
everything is.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

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
    _check_reconstruct_bin(args)
    step = 360.0 / (args.projections - 1)
    t0 = time.perf_counter()
    print(f"labdct-live demo: {args.projections} projections of {args.sample}, "
          f"method {args.method}, work folder {args.out}")
    with stop_on_signals(), work_folder(args.out), LiveSession(args.out, method=args.method,
                                             target_snr=args.target_snr,
                                             report=tqdm.write,
                                             outage_limit=args.outage_limit,
                                             reconstruct=args.reconstruct,
                                             reconstruct_bin=args.reconstruct_bin,
                                             live_map=_live_map(args)) as session:
        detector, rotation = session.simulated_instrument(
            args.sample, seed=args.seed, detector_shape=args.detector, exposure=args.exposure)
        if args.reconstruct:
            session.end_of_scan.reference = _write_reference(detector, session.workdir)
        bar = tqdm(total=args.projections, desc="scan", unit="frame")
        session.RE.subscribe(lambda name, doc: bar.update(1) if name == "event" else None)
        interrupted = False
        t_scan = time.perf_counter()
        try:
            session.RE(labdct_scan(detector, rotation, start=-180.0, stop=180.0, step=step,
                                   exposure=args.exposure, md={"purpose": "demo"}))
        except RunEngineInterrupted:  # Ctrl-C: bluesky paused the scan; end it for good
            interrupted = True
            bar.close()
            _skip_reconstruction(session)
            print("\ninterrupted: aborting the scan; processing what it took (no "
                  "reconstruction) ...")
            bluesky_log = logging.getLogger("bluesky")
            level = bluesky_log.level
            bluesky_log.setLevel(logging.CRITICAL)  # its "Run aborted" traceback says nothing
            try:
                session.RE.abort("interrupted by the user (Ctrl-C)")
            finally:
                bluesky_log.setLevel(level)
        bar.close()
        t_scan = time.perf_counter() - t_scan
        print("scan over; waiting for the processing to catch up"
              + (" and the reconstruction ..." if args.reconstruct else " ..."))
        try:
            complete = session.wait()
        except KeyboardInterrupt:  # Ctrl-C while waiting: stop the processing cleanly
            interrupted, complete = True, False
            _skip_reconstruction(session)
            print("\ninterrupted: stopping the processing (the raw run keeps every frame; "
                  "a reconstruction under way is abandoned) ...")
            if not all(p.results_complete for p in session.processors):
                for processor in session.processors:
                    processor.cancel("interrupted by the user (Ctrl-C)")
                session.wait(60.0)  # not for a reconstruction: it cannot be stopped
        elapsed = time.perf_counter() - t0
        _report(session, elapsed, args.target_snr)
        reconstructed = interrupted or not args.reconstruct or _report_grainmap(
            session, elapsed, t_scan)
        _report_next_steps(session)
        if interrupted:
            session.close(10.0)  # do not wait long for work the user asked to stop
    if interrupted:
        return 130
    return 0 if complete and reconstructed else 1


def _live_map(args: argparse.Namespace):
    """The live grain map's settings of ``--live-map K`` (False when 0)."""
    if args.live_map < 0:
        raise ValueError(f"--live-map must be 0 (off) or a number of frames, got "
                         f"{args.live_map}")
    if not args.live_map:
        return False
    from labdct_live.callbacks.live_grainmap import LiveMapSettings

    return LiveMapSettings(every=args.live_map, bin=args.reconstruct_bin)


def _check_reconstruct_bin(args: argparse.Namespace) -> None:
    """Refuse a ``--reconstruct-bin`` that does not divide the detector, before the scan."""
    from labdct_live.simulation.presets import preset

    factor = args.reconstruct_bin
    shape = tuple(args.detector) if args.detector else preset(args.sample)[1].detector_shape
    if factor < 1 or any(n % factor for n in shape):
        raise ValueError(f"--reconstruct-bin {factor} must be a positive divisor of the "
                         f"detector's {shape[0]}x{shape[1]} pixels")


def _write_reference(detector, workdir: Path) -> Path:
    """Write the simulated sample's grain map as the comparison's reference.

    The simulator's grain map stands in for the synchrotron DCT reference of a real scan.

    Parameters
    ----------
    detector : LabDCTDetector
        The simulated detector, whose simulator holds the sample.
    workdir : Path
        The demo's work folder.

    Returns
    -------
    Path
        ``workdir/reference/grainmap.h5`` (GrainMapper3D layout).
    """
    from labdct_live.grains.formats.gm3d import write_gm3d
    from labdct_live.simulation.scanfolder import grainmap_of

    path = workdir / "reference" / "grainmap.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_gm3d(path, grainmap_of(detector.simulator.sample))
    return path


def _skip_reconstruction(session) -> None:
    """No reconstruction or comparison of a run the user interrupted (the hook reads these
    when the run's processing ends)."""
    if session.end_of_scan is not None:
        session.end_of_scan.reconstruct = None
        session.end_of_scan.reference = None


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


def _report_next_steps(session) -> None:
    """How to get at the results later, or at what waits in the spool."""
    if not session.processors:
        return
    processor = session.processors[-1]
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


def _report_grainmap(session, elapsed: float, t_scan: float) -> bool:
    """The reconstruction and the comparison with the reference; False when either failed.

    Parameters
    ----------
    session : LiveSession
    elapsed : float
        Seconds from the start of the demo to the end of the end-of-scan work.
    t_scan : float
        Seconds the scan took.
    """
    if not session.processors:
        return False
    processor = session.processors[-1]
    result = session.end_of_scan.results.get(processor.node_key, {})
    recon = result.get("reconstruction")
    if recon is None:  # the hook never ran: the processing did not finish (said above)
        return False
    print("\nGrain map")
    if "error" in recon:
        print(f"  ! reconstruction failed: {recon['error']}\n  The processed frames are in "
              "the catalog; to try again: labdct-live serve "
              f"{session.workdir / 'catalog'}, then\n  labdct-live reconstruct "
              f"--from-catalog URI --api-key KEY --run {processor.node_key} --out "
              "GRAINMAP.h5")
        return False
    print(f"  {recon['n_grains']} grains, median completeness "
          f"{recon['median_completeness']:.2f}, reconstructed in {recon['time']:.0f} s")
    for warning in recon["warnings"]:
        print(f"  ! {warning}")
    print(f"  grain map    {recon['grainmap']}  (catalog: processed/{processor.node_key}/"
          "grainmap)")
    comparison = result.get("comparison") or {}
    _print_stage_times(elapsed, t_scan, recon["time"], comparison.get("time", 0.0))
    if "error" in comparison:
        print(f"  ! comparison with the reference failed: {comparison['error']}")
        return False
    _print_comparison(comparison, session.end_of_scan.misorientation)
    return True


def _print_stage_times(elapsed: float, t_scan: float, t_recon: float, t_compare: float) -> None:
    """Where the demo's time went (processing: the catch-up after the scan and the exports)."""
    rest = elapsed - t_scan - t_recon - t_compare
    print(f"  time: scan {t_scan:.0f} s, then processing and exports {rest:.0f} s, "
          f"reconstruction {t_recon:.0f} s, comparison {t_compare:.0f} s")


def _print_comparison(comparison: dict, misorientation: float) -> None:
    """The paper's Table 2 classes and δ_GB of the end-of-scan comparison."""
    counts, delta = comparison["counts"], comparison["delta_gb"]
    print(f"Comparison with the simulator's grain map (pairing within {misorientation:g}°)")
    print(f"  reference grains {counts['reference']}, reconstructed {counts['indexed']}: "
          f"one-to-one {counts['one_to_one']}, one-to-multi {counts['one_to_multi']} "
          f"(split into {counts['one_to_multi_partners']}), missed "
          f"{counts['false_negative']}, false {counts['false_positive']}")
    if delta.get("n"):
        print(f"  δ_GB over {delta['n']} paired grains: mean {delta['mean_um']:.1f} µm, "
              f"median {delta['median_um']:.1f} µm, max {delta['max_um']:.1f} µm")
    else:
        print("  δ_GB: no paired grain")
    print(f"  report       {comparison['report']}")


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
    p.add_argument("--reconstruct", action=argparse.BooleanOptionalAction, default=True,
                   help="reconstruct the grain map at the end of the scan and compare it with "
                        "the simulator's (default; --no-reconstruct skips both)")
    p.add_argument("--reconstruct-bin", type=int, default=2, metavar="N",
                   help="bin the binary frames NxN (OR) before the reconstruction: cheaper "
                        "distance maps and hit tests, coarser spots (default 2: 2032² frames "
                        "are reconstructed at 1016², the reconstruction benchmarks' size)")
    p.add_argument("--live-map", type=int, default=0, metavar="K",
                   help="update a grain map while the scan runs, every K frames, and print "
                        "its quality signal (docs/live-grainmap.md; default 0: off)")
    p.add_argument("--outage-limit", type=float, default=300.0, metavar="SECONDS",
                   help="how long the catalog may stay away before the demo stops waiting "
                        "for it and leaves what it did not receive in WORKDIR/spool "
                        "(default 300)")
    p.set_defaults(func=run)
