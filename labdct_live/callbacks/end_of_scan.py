"""End of scan: the reconstruction-ready export and the grain-map comparison.

:class:`EndOfScan` is the one hook the live processor calls once a run's results are complete
in the catalog (``LiveConfig(end_of_scan=[EndOfScan(...)])``). It reads the binary frames back
from ``processed/<node>`` and exports them (:func:`labdct_live.export.registry.export_scan`),
then, when a reference grain map and a reconstruction of this scan are configured, compares them
(:mod:`labdct_live.grains.compare`). The reconstruction itself is made by an external program
(GrainRecon, GrainMapper3D) from the export; when it is not there yet, the hook says which
command to run once it is.
"""

from __future__ import annotations

import logging
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
    """

    def __init__(self, out_dir, formats=("grainrecon", "gm3d"), reference=None,
                 reconstruction=None, misorientation: float = 1.0):
        self.out_dir = Path(out_dir)
        self.formats = tuple(formats)
        self.reference = Path(reference) if reference else None
        self.reconstruction = reconstruction
        self.misorientation = misorientation
        self.results: dict[str, dict] = {}

    def __call__(self, processor) -> None:
        node_key = processor.node_key
        if processor.writer is None:
            logger.warning("run %s produced no results: nothing to export", processor.raw_uid)
            return
        outputs = {}
        for fmt in self.formats:
            out = export_from_catalog(processor.writer.client, node_key, fmt,
                                      self.out_dir / node_key / fmt,
                                      start_doc=processor.start_doc, overwrite=True,
                                      progress=False)
            outputs[fmt] = str(out)
            logger.info("exported %s to %s", fmt, out)
        result = {"exports": outputs}
        if self.reference is not None:
            result["comparison"] = self._compare(node_key)
        self.results[node_key] = result

    def _compare(self, node_key: str) -> str:
        recon = (Path(str(self.reconstruction).format(node=node_key)) if self.reconstruction
                 else None)
        if recon is None or not recon.is_file():
            message = (f"reconstruct the export in {self.out_dir / node_key}, then run: "
                       f"labdct-live compare {self.reference} RECONSTRUCTION.h5 "
                       f"--out {self.out_dir / node_key / 'comparison'}")
            logger.info(message)
            return message
        from labdct_live.grains.compare.comparison import compare_grainmaps
        from labdct_live.grains.compare.report import write_report
        from labdct_live.grains.formats.registry import read_grainmap

        comparison = compare_grainmaps(read_grainmap(self.reference), read_grainmap(recon),
                                       threshold_deg=self.misorientation, label=node_key)
        report = write_report([comparison], self.out_dir / node_key / "comparison")
        return str(report)
