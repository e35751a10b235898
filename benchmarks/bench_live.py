"""Live processing on a full-size scan: latency, RunEngine overhead, queue depth.

    python benchmarks/bench_live.py --projections 37 --method dl

One embedded catalog, the simulated D35 instrument at 2032² in stream mode (HDF5 + StreamDatum)
and the raw run through TiledWriter. The detector's clean projections are cached by a warm-up
scan first, so the scans below cost what a real detector's frames would: noise, HDF5 write.

1. the scan without the live plugin (TiledWriter only): the RunEngine's wall time per frame;
2. the same scan with the live plugin: wall time per frame (the overhead is the difference),
   per-frame latency from the event (the frame is on disk) to its results in the catalog,
   and the inbox depth seen at each event (frames arrive faster than they are processed when
   both share 2 cores);
3. with ``--live-map-every K`` (K > 0), the same scan with the live plugin and the live grain
   map (an update every K frames, frames binned 2x2): the RunEngine's wall time per frame,
   and the latency from a frame's event to the first map update that used it.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
from bluesky import RunEngine

from labdct_live.acquisition.plans import labdct_scan
from labdct_live.callbacks.live import LiveConfig, live_router
from labdct_live.callbacks.raw_writer import ResilientTiledWriter
from labdct_live.live.session import LiveSession


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--projections", type=int, default=37)
    ap.add_argument("--method", default="dl", choices=["dl", "routine"])
    ap.add_argument("--sample", default="D35")
    ap.add_argument("--live-map-every", type=int, default=0,
                    help="also run the scan with the live grain map, an update every K frames")
    ap.add_argument("--frame-delay", type=float, default=0.0,
                    help="seconds added to every frame of the live-map scan (a longer "
                         "exposure), so that the map can keep up; subtracted from its "
                         "RunEngine time")
    ap.add_argument("--detector", type=int, default=None,
                    help="bin the detector to N x N pixels (default: the preset's)")
    args = ap.parse_args()
    step = 360.0 / (args.projections - 1)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.sample} "
          f"{args.detector or 2032}², "
          f"{args.projections} frames, method {args.method}")
    with tempfile.TemporaryDirectory() as tmp, \
            LiveSession(tmp, method=args.method, export_formats=()) as session:
        shape = None if args.detector is None else (args.detector, args.detector)
        detector, rotation = session.simulated_instrument(args.sample, seed=1,
                                                          detector_shape=shape)
        plan = lambda: labdct_scan(detector, rotation, step=step, exposure=1.0)  # noqa: E731

        # warm-up scan without the plugin: fills the detector's projection cache
        bare = RunEngine({})
        raw = ResilientTiledWriter(session.client, batch_size=1)
        bare.subscribe(raw)
        t = time.perf_counter()
        bare(plan())
        per_frame = (time.perf_counter() - t) / args.projections
        print(f"warm-up (simulating projections): {per_frame:.3f} s/frame")
        t = time.perf_counter()
        bare(plan())
        without = (time.perf_counter() - t) / args.projections
        raw.flush()
        print(f"RunEngine without the plugin: {without:.3f} s/frame")

        # with the plugin
        event_time, result_time, depth = {}, {}, []
        processors = []
        config = LiveConfig(client=session.client, method=args.method,
                            spool_dir=session.workdir / "spool",
                            listeners=[lambda p, row, r: result_time.__setitem__(row["frame"],
                                                                                 time.time())])
        router = live_router(config, processors)
        withp = RunEngine({})
        withp.subscribe(ResilientTiledWriter(session.client, batch_size=1))
        withp.subscribe(router)

        def watch(name, doc):
            if name == "event":
                event_time[doc["seq_num"] - 1] = doc["time"]
                depth.append(len(processors[-1].inbox) if processors else 0)

        withp.subscribe(watch)
        t = time.perf_counter()
        withp(plan())
        with_plugin = (time.perf_counter() - t) / args.projections
        scan_end = time.time()
        processors[-1].wait()
        drained = time.time() - scan_end
        latency = np.array([result_time[i] - event_time[i] for i in sorted(result_time)])
        seconds = [r["processing_seconds"] for r in processors[-1].rows.values()]
        print(f"RunEngine with the plugin:    {with_plugin:.3f} s/frame "
              f"(overhead {with_plugin - without:+.3f} s/frame, "
              f"{100 * (with_plugin / without - 1):+.0f} %)")
        print(f"processing per frame: {np.median(seconds):.3f} s (median, {args.method})")
        print(f"latency event -> result in catalog: median {np.median(latency):.2f} s, "
              f"p90 {np.percentile(latency, 90):.2f} s, max {latency.max():.2f} s")
        print(f"inbox depth at each event: max {max(depth)}, last {depth[-1]}; backlog drained "
              f"{drained:.1f} s after the scan ended; counts {processors[-1].counts}")
        print("depth per frame:", depth)
        if args.live_map_every > 0:
            live_map_scan(session, plan, args, without)


def live_map_scan(session, plan, args, without: float) -> None:
    """Stage 3: the plugin and the live grain map; RunEngine time and frame-to-map latency."""
    from labdct_live.callbacks.live_grainmap import LiveGrainMap, LiveMapSettings

    live = LiveGrainMap(LiveMapSettings(every=args.live_map_every, bin=2, store=False),
                        report=print)
    processors, event_time = [], {}
    config = LiveConfig(client=session.client, method=args.method,
                        spool_dir=session.workdir / "spool", listeners=[live.on_frame],
                        end_of_scan=[live])
    RE = RunEngine({})
    RE.subscribe(ResilientTiledWriter(session.client, batch_size=1))
    RE.subscribe(live_router(config, processors))
    RE.subscribe(lambda name, doc: event_time.__setitem__(doc["seq_num"] - 1, doc["time"])
                 if name == "event" else None)
    if args.frame_delay > 0:  # in the RunEngine's thread: the next frame waits, as it would
        RE.subscribe(lambda name, doc: time.sleep(args.frame_delay) if name == "event"
                     else None)
    t = time.perf_counter()
    RE(plan())
    with_map = (time.perf_counter() - t) / args.projections - args.frame_delay
    processors[-1].wait()
    print(f"RunEngine with the plugin and the live map: {with_map:.3f} s/frame "
          f"({100 * (with_map / without - 1):+.0f} % against no plugin)")
    updates = [(q.finished, q.n_frames) for q in live.history[processors[-1].node_key]]
    order = sorted(event_time)  # sequential scan: an update of n frames used frames 0..n-1
    latency = [next((when for when, n in updates if n > i), np.nan) - event_time[i]
               for i in order]
    latency = np.array(latency)
    done = latency[np.isfinite(latency)]
    print(f"live map: {len(updates)} updates during the scan; frame -> first update using "
          f"it: median {np.median(done) if done.size else float('nan'):.1f} s, max "
          f"{done.max() if done.size else float('nan'):.1f} s ({done.size} of {len(order)} "
          f"frames reached the map before the end of the scan)")


if __name__ == "__main__":
    main()
