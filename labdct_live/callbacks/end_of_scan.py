"""End of scan: the reconstruction-ready export and the grain-map comparison.

:class:`EndOfScan` is the one hook the live processor calls once a run's results are complete
in the catalog (``LiveConfig(end_of_scan=[EndOfScan(...)])``). It reads the binary frames back
from ``processed/<node>`` and exports them (:func:`labdct_live.export.registry.export_scan`),
then, when a reference grain map and a reconstruction of this scan are configured, compares them
(:mod:`labdct_live.grains.compare`). With ``reconstruct=True`` (or a
:class:`~labdct_live.reconstruction.ReconstructionOptions`) the hook reconstructs the grain map
itself from the catalog (:mod:`labdct_live.callbacks.reconstruction`), in the processor's
worker thread, writes ``out_dir/<node>/grainmap.h5`` (GrainMapper3D layout, plus the grain
table and summary), stores it as ``processed/<node>/grainmap`` and compares it with the
reference. Otherwise the reconstruction is made by an external program (GrainRecon,
GrainMapper3D) from the export; when it is not there yet, the hook says which command to run
once it is. Failures are logged and recorded in :attr:`EndOfScan.results`, never raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from labdct_live.io.names import check_key

__all__ = ["EndOfScan", "export_inputs", "export_from_catalog"]

logger = logging.getLogger(__name__)


def export_inputs(node, start_doc: dict) -> tuple:
    """``((index, mask) iterator, metadata)`` of a processed node, for :func:`export_scan`."""
    rows = node["frames"].read().sort_values("frame")
    n = int(node.metadata.get("n_frames", len(rows)))
    rows = rows.set_index("frame").reindex(range(n))
    if "geometry" not in start_doc:
        raise ValueError("the raw run's start document has no 'geometry': the export needs it "
                         "(scans made with labdct_live.acquisition.plans.labdct_scan carry it)")
    processing = {k: v for k, v in node.metadata.items()
                  if k in ("method", "threshold", "min_size", "model_name", "model_version",
                           "model_hash") or k.startswith("routine_")}
    omegas = rows["omega"].to_numpy(dtype=float)
    if not np.isfinite(omegas).all():  # frames that never reached the catalog: use the plan's
        planned = np.asarray(start_doc.get("omegas", []), dtype=float)
        if planned.size == n:
            omegas = np.where(np.isfinite(omegas), omegas, planned)
    metadata = {"geometry": start_doc["geometry"], "omegas": omegas.tolist(),
                "exposure": rows["exposure"].fillna(0.0).to_numpy().tolist(),
                "sample": start_doc.get("sample") or {}, "processing": processing,
                "raw_uid": node.metadata.get("raw_uid", start_doc.get("uid", ""))}
    binary = node["binary"]
    frames = ((i, np.asarray(binary[i])) for i in range(n))
    return frames, metadata


def export_from_catalog(client, node_key: str, fmt: str, out, start_doc: dict | None = None,
                        **options) -> Path:
    """Export ``processed/<node_key>`` in ``fmt`` (grainrecon, gm3d, nexus) to ``out``."""
    from labdct_live.export.registry import export_scan

    node = client["processed"][check_key(node_key, "processed node key")]
    if start_doc is None:
        raw_uid = check_key(node.metadata["raw_uid"], "raw run uid")
        start_doc = dict(client[raw_uid].metadata["start"])
    frames, metadata = export_inputs(node, start_doc)
    return export_scan(frames, metadata, fmt, out, **options)


class EndOfScan:
    """Export (and compare) when a run's processing is complete.

    Parameters
    ----------
    out_dir : path-like
        Exports go to ``out_dir/<node>/<format>``.
    formats : sequence of {"grainrecon", "gm3d", "nexus"}
    reference : path-like, optional
        Ground-truth grain map (e.g. synchrotron DCT, or the simulator's ``grainmap.h5``).
    reconstruction : path-like, optional
        The grain map reconstructed from this scan's export; ``{node}`` is replaced by the
        processed node's key.
    misorientation : float
        Pairing threshold of the comparison (degrees).
    reconstruct : bool or ReconstructionOptions
        Reconstruct the grain map from the catalog after the export (default options when
        True); the result replaces ``reconstruction`` in the comparison.
    reconstruct_bin : int
        Bin the binary frames ``reconstruct_bin`` x ``reconstruct_bin`` (OR) and the geometry
        with them before reconstructing
        (:func:`~labdct_live.callbacks.reconstruction.bin_scan`): cheaper distance maps and
        hit tests, coarser spots.
    report : callable, optional
        Receives a line when the reconstruction starts and when it ends (``print`` in the
        CLI): it takes minutes, and runs after the last frame.
    live_map : LiveGrainMap, optional
        The run's live grain map (:mod:`labdct_live.callbacks.live_grainmap`): its distance
        maps, computed as the frames came, are reused when it holds the very frames the
        reconstruction reads (same binning), and its ``updates`` table stays in the
        ``grainmap`` node beside the final map.

    Attributes
    ----------
    results : dict
        Per processed node: ``exports`` (format: path; a failed export's message in
        ``export_errors``, also appended to the processor's ``errors``); with
        ``reconstruct`` a ``reconstruction`` entry (``grainmap`` file, ``n_grains``,
        ``median_completeness``, ``time``, ``binned``, or ``error``);
        with a reference a ``comparison`` entry (the report's path, ``counts``: the Table 2
        classes, ``delta_gb``, ``time``) or the command to run.
    """

    def __init__(self, out_dir, formats=("grainrecon", "gm3d"), reference=None,
                 reconstruction=None, misorientation: float = 1.0, reconstruct=False,
                 reconstruct_bin: int = 1, report: Callable[[str], None] | None = None,
                 live_map=None):
        if int(reconstruct_bin) != reconstruct_bin or reconstruct_bin < 1:
            raise ValueError(f"reconstruct_bin must be a whole number >= 1, got "
                             f"{reconstruct_bin!r}")
        if reconstruct not in (False, None):  # the reconstruction is imported only if used
            from labdct_live.reconstruction.pipeline import ReconstructionOptions

            if reconstruct is True:
                reconstruct = ReconstructionOptions()
            if not isinstance(reconstruct, ReconstructionOptions):
                raise TypeError("reconstruct must be True, False or a ReconstructionOptions, "
                                f"got {type(reconstruct).__name__}")
        self.reconstruct = reconstruct or None
        self.out_dir = Path(out_dir)
        self.formats = tuple(formats)
        self.reference = Path(reference) if reference else None
        self.reconstruction = reconstruction
        self.misorientation = misorientation
        self.reconstruct_bin = int(reconstruct_bin)
        self.report = report
        self.live_map = live_map
        self.results: dict[str, dict] = {}

    def _say(self, message: str) -> None:
        """Log ``message`` and pass it to ``report``."""
        logger.info(message)
        if self.report is not None:
            self.report(message)

    def __call__(self, processor) -> None:
        node_key = processor.node_key
        if processor.writer is None:
            logger.warning("run %s produced no results: nothing to export", processor.raw_uid)
            return
        node_key = check_key(node_key, "processed node key")
        outputs = {}
        result = self.results[node_key] = {"exports": outputs}
        for fmt in self.formats:
            try:
                out = export_from_catalog(processor.writer.client, node_key, fmt,
                                          self.out_dir / node_key / fmt,
                                          start_doc=processor.start_doc, overwrite=True,
                                          progress=False)
            except Exception as exc:  # recorded; the other formats and the rest still run
                logger.exception("export of %s as %s failed", node_key, fmt)
                message = f"{type(exc).__name__}: {exc}"
                result.setdefault("export_errors", {})[fmt] = message
                processor.errors.append(f"end of scan: export {fmt}: {message}")
                continue
            outputs[fmt] = str(out)
            logger.info("exported %s to %s", fmt, out)
        recon = None
        if self.reconstruct is not None:
            result["reconstruction"] = self._reconstruct(processor, node_key)
            recon = result["reconstruction"].get("grainmap")
            if recon is None and self.reference is not None:
                result["comparison"] = {"error": "no reconstruction to compare: "
                                        + result["reconstruction"]["error"]}
                return
        if self.reference is not None:
            try:
                result["comparison"] = self._compare(node_key, recon)
            except Exception as exc:  # recorded, never raised into the processor
                logger.exception("comparison of %s failed", node_key)
                result["comparison"] = {"error": f"{type(exc).__name__}: {exc}"}

    def _reconstruct(self, processor, node_key: str) -> dict:
        """Reconstruct from the catalog, write the file and the ``grainmap`` node."""
        import warnings

        from labdct_live.callbacks.reconstruction import (
            bin_scan,
            scan_from_catalog,
            store_grainmap,
        )
        from labdct_live.reconstruction.output import write_reconstruction
        from labdct_live.reconstruction.pipeline import LowCompletenessWarning, reconstruct

        t0 = time.perf_counter()
        client = processor.writer.client
        try:
            scan = scan_from_catalog(client, node_key, start_doc=processor.start_doc)
            scan = bin_scan(scan, self.reconstruct_bin)
            n, rows, cols = scan.frames.shape
            factor = self.reconstruct_bin
            binned = f" (binned {factor}x{factor})" if factor > 1 else ""
            self._say(f"reconstructing the grain map of {node_key} from {n} binary frames of "
                      f"{rows}x{cols}{binned} ...")
            model = (None if self.live_map is None
                     else self.live_map.model_for(node_key, scan))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", LowCompletenessWarning)
                rec = reconstruct(scan, self.reconstruct, model=model)
            folder = self.out_dir / node_key
            folder.mkdir(parents=True, exist_ok=True)
            path, table, summary = write_reconstruction(folder / "grainmap.h5", rec, scan)
            notes = [str(w.message) for w in caught
                     if issubclass(w.category, LowCompletenessWarning)]
            elapsed = time.perf_counter() - t0
            store_grainmap(client, node_key, rec, extra={
                "file": path.name, "warnings": notes, "time": elapsed,
                "binned": self.reconstruct_bin, "live_maps_reused": model is not None,
                "live_maps_not_reused": "" if self.live_map is None or model is not None
                else self.live_map.not_reused.get(node_key, ""),
                "frames_status": str(getattr(processor, "status", "")),
                "raw_uid": str(processor.raw_uid)})
        except Exception as exc:  # recorded, never raised into the processor
            logger.exception("reconstruction of %s failed", node_key)
            error = f"{type(exc).__name__}: {exc}"
            self._say(f"reconstruction of {node_key} failed after "
                      f"{time.perf_counter() - t0:.0f} s: {error}")
            return {"error": error}
        out = {"grainmap": str(path), "grains": str(table), "summary": str(summary),
               "n_grains": int(len(rec.grains)),
               "median_completeness": float(rec.stats.get("median_completeness", 0.0)),
               "time": elapsed, "warnings": notes, "binned": self.reconstruct_bin}
        self._say(f"reconstructed {node_key}: {out['n_grains']} grains, median completeness "
                  f"{out['median_completeness']:.2f}, in {elapsed:.0f} s")
        return out

    def _compare(self, node_key: str, recon: str | None = None):
        if recon is None and self.reconstruction:
            recon = Path(str(self.reconstruction).format(node=node_key))
        recon = Path(recon) if recon is not None else None
        if recon is None or not recon.is_file():
            message = (f"reconstruct the export in {self.out_dir / node_key}, then run: "
                       f"labdct-live compare {self.reference} RECONSTRUCTION.h5 "
                       f"--out {self.out_dir / node_key / 'comparison'}")
            logger.info(message)
            return message
        from labdct_live.grains.compare.comparison import compare_grainmaps
        from labdct_live.grains.compare.report import write_report
        from labdct_live.grains.formats.registry import read_grainmap

        self._say(f"comparing the grain map of {node_key} with the reference {self.reference} ...")
        t0 = time.perf_counter()
        comparison = compare_grainmaps(read_grainmap(self.reference), read_grainmap(recon),
                                       threshold_deg=self.misorientation, label=node_key)
        report = write_report([comparison], self.out_dir / node_key / "comparison")
        return {"report": str(report), "counts": _plain(comparison.counts()),
                "delta_gb": _plain(_delta_gb(comparison)), "time": time.perf_counter() - t0}


def _plain(value):
    """Numbers and containers of numbers as plain Python (for JSON and logs)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _delta_gb(comparison) -> dict:
    """Mean, median and max δ_GB (µm) over the paired reference grains."""
    ref = comparison.reference_grains
    values = ref.loc[ref["n_partners"] > 0, "delta_gb_mm"].to_numpy(dtype=float) * 1e3
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"n": 0}
    return {"n": int(values.size), "mean_um": float(values.mean()),
            "median_um": float(np.median(values)), "max_um": float(values.max())}
