"""A live LabDCT session: RunEngine, catalog, TiledWriter, live processing, monitor, export.

:class:`LiveSession` wires everything the way a beamline would: the raw run goes to tiled
through bluesky-tiled-plugins' ``TiledWriter``; each projection is processed live into
``processed/<raw uid>``; the exposure monitor plots SNR and advises exposure; at the end of
the scan the reconstruction-ready export runs. With no ``catalog_uri`` the session starts an
embedded catalog (SQLite + files, :class:`~labdct_live.catalog.server.CatalogServer`) in
``workdir/catalog`` and stops it on exit.

Examples
--------
>>> from labdct_live.live.session import LiveSession
>>> from labdct_live.acquisition.plans import labdct_scan
>>> with LiveSession("labdct-work", method="routine") as session:      # doctest: +SKIP
...     detector, rotation = session.simulated_instrument("D18", detector_shape=(512, 512))
...     (uid,) = session.RE(labdct_scan(detector, rotation, step=2, exposure=1.0))
...     session.wait()
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from labdct_live.acquisition.detector import (
    LabDCTDetector,
    make_rotation_stage,
    scaled_geometry,
)
from labdct_live.callbacks.end_of_scan import EndOfScan
from labdct_live.callbacks.live import LiveConfig, LiveProcessor, live_router
from labdct_live.callbacks.monitor import ExposureMonitor
from labdct_live.callbacks.raw_writer import ResilientTiledWriter
from labdct_live.catalog.client import connect
from labdct_live.catalog.server import CatalogServer
from labdct_live.simulation.forward import Simulator
from labdct_live.simulation.microstructure import make_sample
from labdct_live.simulation.presets import preset

__all__ = ["LiveSession"]

logger = logging.getLogger(__name__)


class LiveSession:
    """Everything needed to acquire and process LabDCT scans live (see the module docstring).

    Parameters
    ----------
    workdir : path-like
        Holds the embedded catalog, the detector's raw files (``raw/``), spools, exports and
        monitor plots.
    catalog_uri, api_key : str, optional
        An existing tiled server; an embedded catalog is started when None.
    method, method_options
        Processing method (see :mod:`labdct_live.methods`).
    target_snr : float
        The exposure monitor's target median spot SNR.
    export_formats : sequence of str
        Exports made at the end of each scan (``grainrecon``, ``gm3d``, ``nexus``).
    reference : path-like, optional
        Reference grain map for the end-of-scan comparison.
    reconstruct : bool or ReconstructionOptions
        Reconstruct the grain map at the end of each scan (``EndOfScan(reconstruct=...)``):
        a ``grainmap`` node under ``processed/<uid>`` and ``export/<uid>/grainmap.h5``. Off by
        default: a full-size scan takes minutes to tens of minutes.
    reconstruct_bin : int
        Bin the binary frames this many times along each axis before reconstructing
        (``EndOfScan(reconstruct_bin=...)``).
    live_map : bool or LiveMapSettings
        Update a grain map while the scan runs
        (:class:`~labdct_live.callbacks.live_grainmap.LiveGrainMap`, default settings when
        True), with its scan-quality signal in :attr:`live_grainmap`; the end-of-scan
        reconstruction reuses its distance maps.
    report : callable, optional
        Receives the monitor's advice lines and the end-of-scan reconstruction's start and
        end lines (``print`` in the CLI).
    queue_size : int
        Frames waiting in memory before spilling to disk.
    outage_limit : float
        Seconds a catalog may stay away before the session stops waiting for it: the raw run
        and the results then wait in ``workdir/spool`` for ``labdct-live import-spool``.
    """

    def __init__(self, workdir, *, catalog_uri: str | None = None, api_key: str | None = None,
                 method: str = "auto", method_options: dict | None = None,
                 target_snr: float = 4.0, export_formats=("grainrecon", "gm3d"),
                 reference=None, report: Callable[[str], None] | None = None,
                 queue_size: int = 16, outage_limit: float = 300.0, reconstruct=False,
                 reconstruct_bin: int = 1, live_map=False):
        self.workdir = Path(workdir).resolve()
        self.catalog_uri = catalog_uri
        self.api_key = api_key
        self.method = method
        self.method_options = dict(method_options or {})
        self.target_snr = target_snr
        self.export_formats = tuple(export_formats)
        self.reference = reference
        self.reconstruct = reconstruct
        self.reconstruct_bin = reconstruct_bin
        self.live_map = live_map
        self.live_grainmap = None  # the LiveGrainMap, when live_map
        self.report = report
        self.queue_size = queue_size
        self.outage_limit = outage_limit
        self.server: CatalogServer | None = None
        self.processors: list[LiveProcessor] = []
        self.RE = None
        self.client = None
        self.monitor: ExposureMonitor | None = None
        self.end_of_scan: EndOfScan | None = None
        self.raw_writer: ResilientTiledWriter | None = None
        self._closed = False

    @property
    def spool_dir(self) -> Path:
        """Where frames, results and raw runs wait when the catalog or processing is behind."""
        return self.workdir / "spool"

    @property
    def raw_dir(self) -> Path:
        """Where the simulated detector writes its HDF5 files (readable by the catalog)."""
        return self.workdir / "raw"

    def open(self) -> LiveSession:
        from bluesky import RunEngine

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.raw_dir.mkdir(exist_ok=True)
        if self.catalog_uri is None:
            self.server = CatalogServer(self.workdir / "catalog", readable_storage=[self.raw_dir])
            self.server.start()
            self.catalog_uri, self.api_key = self.server.uri, self.server.api_key
        try:
            self.client = connect(self.catalog_uri, self.api_key)
            self.RE = RunEngine({})
            # The raw run goes to tiled from a worker thread that rewrites the run after an
            # outage: a catalog outage never aborts or slows the scan. batch_size=1 registers
            # each frame as it comes (TiledWriter's default waits for the stop document).
            self.raw_writer = ResilientTiledWriter(self.client, batch_size=1,
                                                   outage_limit=self.outage_limit,
                                                   spool_dir=self.spool_dir / "raw")
            self.RE.subscribe(self.raw_writer)
            self.monitor = ExposureMonitor(self.target_snr,
                                           plot_path=self.workdir / "monitor" / "{uid}.png",
                                           report=self.report)
            self.RE.subscribe(self.monitor)
            listeners, hooks = [self.monitor.on_frame], []
            if self.live_map:  # imported only when used: it loads the reconstruction
                from labdct_live.callbacks.live_grainmap import LiveGrainMap

                settings = None if self.live_map is True else self.live_map
                self.live_grainmap = LiveGrainMap(settings, monitor=self.monitor,
                                                  report=self.report)
                listeners.append(self.live_grainmap.on_frame)
                hooks.append(self.live_grainmap)
            self.end_of_scan = EndOfScan(self.workdir / "export", self.export_formats,
                                         reference=self.reference,
                                         reconstruct=self.reconstruct,
                                         reconstruct_bin=self.reconstruct_bin,
                                         report=self.report, live_map=self.live_grainmap)
            config = LiveConfig(client=connect(self.catalog_uri, self.api_key),
                                method=self.method, method_options=self.method_options,
                                queue_size=self.queue_size,
                                spool_dir=self.spool_dir, finalize_timeout=self.outage_limit,
                                listeners=listeners, end_of_scan=[*hooks, self.end_of_scan])
            self.RE.subscribe(live_router(config, self.processors))
        except BaseException:  # a half-open session must not leave its server running
            self._stop_server()
            raise
        return self

    def simulated_instrument(self, sample: str = "D35", *, seed: int = 1,
                             detector_shape: tuple[int, int] | None = None,
                             mode: str = "stream", exposure: float = 1.0, name: str = "labdct"):
        """A simulated LabDCT detector and rotation stage for a preset sample.

        ``detector_shape`` smaller than the preset's bins the detector (same field of view).
        """

        spec, geometry = preset(sample)
        if detector_shape is not None and tuple(detector_shape) != geometry.detector_shape:
            geometry = scaled_geometry(geometry, tuple(detector_shape))
        simulator = Simulator(make_sample(spec, seed=seed), geometry)
        rotation = make_rotation_stage()
        detector = LabDCTDetector(simulator=simulator, rotation=rotation, name=name, mode=mode,
                                  write_dir=self.raw_dir, seed=seed, exposure=exposure)
        return detector, rotation

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the raw runs are in the catalog and every run's processing (and
        end-of-scan work) is done.

        Returns True when every raw run and every frame's result is in the catalog; False
        when ``timeout`` seconds (in all) pass first, or when something waits in the spool
        for ``labdct-live import-spool`` (a catalog that stayed away) or is missing (see each
        processor's ``status`` and ``missing``).
        """
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        raw_done = self.raw_writer is None or (self.raw_writer.flush(left())
                                               and not self.raw_writer.spooled_runs)
        processed = [p.wait(left()) for p in self.processors]  # each, not up to a failure
        return raw_done and all(processed)

    def close(self, timeout: float = 600.0) -> None:
        """Wait up to ``timeout`` s for pending work, then stop the embedded catalog.

        Work still pending then is logged; results stay in the spool for a later session.
        Closing again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if not self.wait(timeout):
                logger.error("closing with work pending or not in the catalog after %.0f s: "
                             "raw backlog %s, runs unfinished %d; what waits stays in %s",
                             timeout, self.raw_writer.backlog if self.raw_writer else 0,
                             sum(not p.done.is_set() for p in self.processors),
                             self.spool_dir)
        finally:  # a Ctrl-C while waiting must not leave the server running
            self._stop_server()

    def _stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __enter__(self) -> LiveSession:
        return self.open()

    def __exit__(self, exc_type, *exc) -> None:
        # After an error (or Ctrl-C) the scan may never have stopped: do not wait for it.
        self.close(600.0 if exc_type is None else 10.0)
