"""Write a reconstruction: the GrainMapper3D file, the per-grain table and a summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from labdct_live.grains.formats.gm3d import write_gm3d
from labdct_live.reconstruction.data import ScanData
from labdct_live.reconstruction.pipeline import ReconstructionResult

__all__ = ["write_reconstruction", "companion_paths", "grain_summary"]


def companion_paths(out: str | os.PathLike) -> tuple[Path, Path]:
    """``(GRAINMAP_grains.csv, GRAINMAP_reconstruction.json)`` next to ``GRAINMAP.h5``."""
    out = Path(out)
    return (out.with_name(out.stem + "_grains.csv"),
            out.with_name(out.stem + "_reconstruction.json"))


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_reconstruction(out: str | os.PathLike, result: ReconstructionResult,
                         scan: ScanData | None = None) -> tuple[Path, Path, Path]:
    """Write the grain map (GrainMapper3D layout), its grain table and a JSON summary.

    Parameters
    ----------
    out : path-like
        The ``.h5`` grain map; the table goes to ``<stem>_grains.csv`` and the summary
        (threshold, null test, timings, options) to ``<stem>_reconstruction.json``.
    result : ReconstructionResult
    scan : ScanData, optional
        Its geometry is recorded in the file's acquisition parameters.

    Returns
    -------
    (Path, Path, Path)
        The grain map, the table and the summary.
    """
    out = Path(out)
    acquisition = None
    if scan is not None:
        g = scan.geometry
        acquisition = {"SourceToSampleDistance": float(g.lss),
                       "SampleToDetectorDistance": float(g.lsd),
                       "NumberOfProjections": int(scan.n_frames), "Voltage": float(g.kvp)}
    write_gm3d(out, result.grainmap, acquisition=acquisition)
    table_path, summary_path = companion_paths(out)
    result.grains.to_csv(table_path, index=False)
    summary = {
        "grainmap": out.name, "grains": table_path.name, "n_grains": int(len(result.grains)),
        "threshold": result.threshold,
        "null_completeness": result.null_completeness,
        "stats": result.stats, "source": scan.source if scan is not None else "",
        "options": result.grainmap.metadata.get("options", {}),
        "geometry": scan.geometry.to_dict() if scan is not None else None,
    }
    summary_path.write_text(json.dumps(_jsonable(summary), indent=1))
    return out, table_path, summary_path


def grain_summary(result: ReconstructionResult, max_rows: int = 40) -> str:
    """A plain-text per-grain summary (the first ``max_rows`` grains by size)."""
    t = result.grains
    if len(t) == 0:
        return "no grains"
    shown = t.sort_values("n_voxels", ascending=False).head(max_rows)
    lines = [f"{'grain':>5} {'x mm':>8} {'y mm':>8} {'z mm':>8} {'ESD µm':>7} {'phi1':>7} "
             f"{'Phi':>7} {'phi2':>7} {'compl.':>6} {'spots':>9}"]
    for r in shown.itertuples():
        lines.append(f"{r.grain_id:5d} {r.x:8.4f} {r.y:8.4f} {r.z:8.4f} {r.diameter * 1e3:7.1f} "
                     f"{r.phi1:7.2f} {r.Phi:7.2f} {r.phi2:7.2f} {r.completeness:6.3f} "
                     f"{r.spots_matched:4d}/{r.spots_predicted:<4d}")
    if len(t) > max_rows:
        lines.append(f"... and {len(t) - max_rows} smaller grains (see the grain table)")
    return "\n".join(lines)
