"""The grain reconstruction of a processed run in the catalog.

:func:`scan_from_catalog` reads the input of :func:`labdct_live.reconstruction.reconstruct`
from the catalog: the binary frames of ``processed/<node>``, ω from its frames table (the
plan's ω for frames that never arrived) and the geometry, material and sample size from the
raw run's start document. :func:`store_grainmap` writes a reconstruction back as the
``grainmap`` container of ``processed/<node>``: the grain-id volume (array ``grain_id``), the
per-grain table (table ``grains``) and a metadata summary whose ``status`` is set last, so a
reader that sees ``status: complete`` sees the whole grain map.

:func:`bin_scan` bins a scan's binary frames (and its geometry) before the reconstruction,
which then works on a coarser detector (``EndOfScan(reconstruct_bin=N)``).

The reconstruction layer does not know the catalog; this module is the bridge.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from labdct_live.io.names import check_key
from labdct_live.reconstruction.data import (
    ReconstructionError,
    SampleEnvelope,
    ScanData,
    bin_frames,
)
from labdct_live.simulation.geometry import Geometry, GeometryError

__all__ = ["scan_from_catalog", "scan_from_node", "scan_setup", "best_per_omega",
           "start_document", "store_grainmap", "grainmap_summary", "bin_scan", "GRAINMAP_KEY"]

logger = logging.getLogger(__name__)

#: Key of the reconstruction's container under ``processed/<node>``.
GRAINMAP_KEY = "grainmap"


def start_document(client, node) -> dict:
    """The start document of the raw run a processed node was made from."""
    raw_uid = check_key(str(node.metadata.get("raw_uid", "")), "raw run uid")
    if raw_uid not in client:
        raise ReconstructionError(f"the raw run {raw_uid} of this processed node is not in "
                                  "the catalog: its start document holds the geometry")
    return dict(client[raw_uid].metadata["start"])


def _sample_of(start_doc: dict) -> tuple[str | None, SampleEnvelope, dict]:
    sample = dict(start_doc.get("sample") or {})
    spec = dict(sample.get("spec") or sample)  # simulated detector: {"spec": ..., "seed": ...}
    material = spec.get("material")
    try:
        envelope = SampleEnvelope(float(spec["diameter"]), float(spec["height"]))
    except (KeyError, TypeError, ValueError):
        raise ReconstructionError(
            "the raw run's start document gives no sample size: put 'sample': {'material', "
            "'diameter', 'height'} (mm) in the plan's md") from None
    extra = {"n_grains": sample.get("n_grains") or spec.get("n_grains")}
    voxel = spec.get("voxel_size")
    if voxel is None and {"material", "diameter", "height"} <= set(spec):
        try:  # the simulator's own grid, so that the map lies voxel for voxel on the truth
            from labdct_live.simulation.microstructure import SampleSpec

            voxel = SampleSpec(**spec).resolved_voxel_size
        except (TypeError, ValueError):
            voxel = None
    extra["voxel_size"] = voxel
    return material, envelope, extra


def scan_setup(start_doc: dict, *, material: str | None = None,
               envelope: SampleEnvelope | None = None
               ) -> tuple[Geometry, str, SampleEnvelope, dict]:
    """Geometry, material, sample envelope and extras (``n_grains``, ``voxel_size``) of a
    run, from its start document.

    Raises
    ------
    ReconstructionError
        No geometry, no material or no sample size in the start document.
    """
    if not start_doc.get("geometry"):
        raise ReconstructionError(
            "the raw run's start document has no 'geometry': a reconstruction needs it (scans "
            "made with labdct_live.acquisition.plans.labdct_scan carry it)")
    try:
        geometry = Geometry.from_dict(dict(start_doc["geometry"]))
    except (GeometryError, TypeError, ValueError) as exc:
        raise ReconstructionError(f"bad geometry in the start document: {exc}") from None
    scan_material, scan_envelope, extra = _sample_of(start_doc) if envelope is None else (
        (start_doc.get("sample") or {}).get("material"), envelope, {})
    material = material or scan_material
    if not material:
        raise ReconstructionError(
            "the raw run's start document names no material: give it ('sample': "
            "{'material': 'Al', ...} in the plan's md, or --material)")
    return geometry, material, scan_envelope, extra


def best_per_omega(omegas: np.ndarray, exposures: np.ndarray) -> np.ndarray:
    """Indices of the frames a reconstruction uses: one per ω, the longest exposure (the
    later frame on a tie), so a frame re-taken at a longer exposure replaces the first.

    Examples
    --------
    >>> best_per_omega(np.array([0., 2., 0., 4.]), np.array([1., 1., 3., 1.])).tolist()
    [1, 2, 3]
    """
    omegas = np.asarray(omegas, float)
    exposures = np.nan_to_num(np.asarray(exposures, float), nan=0.0)
    order = np.lexsort((np.arange(len(omegas)), exposures, np.round(omegas, 6)))
    key = np.round(omegas[order], 6)
    last = np.r_[key[1:] != key[:-1], True]
    return np.sort(order[last])


def scan_from_node(node, start_doc: dict, *, material: str | None = None,
                   envelope: SampleEnvelope | None = None) -> ScanData:
    """The :class:`ScanData` of a processed node (``client["processed"][key]``).

    Only frames processed with a rotation angle (status ``ok``) are used, and frames
    re-taken at the same ω with a longer exposure replace the earlier ones
    (:func:`best_per_omega`).

    Raises
    ------
    ReconstructionError
        No geometry, no material or no sample size in the start document, no binary frames,
        or no frame processed with a rotation angle.
    """
    geometry, material, scan_envelope, extra = scan_setup(start_doc, material=material,
                                                          envelope=envelope)
    if "binary" not in node:
        raise ReconstructionError("the processed node has no binary frames (no frame could "
                                  "be read)")
    n = int(node.metadata.get("n_frames", 0)) or int(node["binary"].shape[0])
    rows = node["frames"].read().sort_values("frame").set_index("frame").reindex(range(n))
    omegas = rows["omega"].to_numpy(dtype=float)
    if not np.isfinite(omegas).all():
        planned = np.asarray(start_doc.get("omegas", []), dtype=float)
        if planned.size == n and start_doc.get("omega_order", "sequential") == "sequential":
            omegas = np.where(np.isfinite(omegas), omegas, planned)
    # frames that failed or were never taken (a scan stopped early) hold no segmentation
    ok = (rows["status"].fillna("").astype(str).to_numpy() == "ok") & np.isfinite(omegas)
    if not ok.any():
        raise ReconstructionError("no frame of the processed node was processed with a "
                                  "rotation angle (status 'ok')")
    exposures = rows["exposure"].to_numpy(dtype=float)
    index = np.flatnonzero(ok)
    index = index[best_per_omega(omegas[index], exposures[index])]
    frames = np.asarray(node["binary"].read())[index] > 0
    omegas = omegas[index]
    source = f"catalog processed/{node.item['id']}"
    return ScanData(frames, omegas, geometry, material, scan_envelope, source=source,
                    extra=extra)


def scan_from_catalog(client, node_key: str, start_doc: dict | None = None,
                      **kwargs) -> ScanData:
    """The :class:`ScanData` of ``processed/<node_key>`` (see :func:`scan_from_node`)."""
    key = check_key(node_key, "processed node key")
    if "processed" not in client or key not in client["processed"]:
        raise ReconstructionError(f"no processed run {key!r} in the catalog")
    node = client["processed"][key]
    if start_doc is None:
        start_doc = start_document(client, node)
    return scan_from_node(node, start_doc, **kwargs)


def bin_scan(scan: ScanData, factor: int) -> ScanData:
    """``scan`` as a detector binned ``factor`` x ``factor`` would have seen it.

    A binned pixel is a spot pixel when any of its pixels is (OR, so no spot is lost), and the
    geometry is :meth:`Geometry.binned <labdct_live.simulation.geometry.Geometry.binned>`
    (same field of view, ``factor`` times the pixel size). The reconstruction's distance
    maps and hit tests then cost ``factor**2`` times less, at the price of a coarser angular
    resolution of the spots.

    Parameters
    ----------
    scan : ScanData
    factor : int
        Pixels binned along each axis; 1 returns ``scan`` itself. Must divide both frame
        dimensions.

    Raises
    ------
    ReconstructionError
        ``factor`` is below 1 or does not divide the frames' rows and columns.

    Examples
    --------
    >>> frames = np.zeros((1, 16, 16), bool)
    >>> frames[0, 3, 5] = True
    >>> scan = ScanData(frames, [0.0], Geometry().binned((16, 16)), "Al",
    ...                 SampleEnvelope(0.1, 0.1))
    >>> binned = bin_scan(scan, 2)
    >>> binned.frames.shape, np.argwhere(binned.frames[0]).tolist()
    ((1, 8, 8), [[1, 2]])
    >>> binned.geometry.detector_shape
    (8, 8)
    """
    frames = bin_frames(scan.frames, factor)
    if factor == 1:
        return scan
    return dataclasses.replace(scan, frames=frames,
                               geometry=scan.geometry.binned(frames.shape[1:]),
                               source=f"{scan.source} (binned {factor}x{factor})")


def grainmap_summary(result) -> dict:
    """The JSON-safe metadata of a reconstruction: grain count, completeness, threshold."""
    grains = result.grains
    completeness = grains["completeness"].to_numpy(float) if len(grains) else np.zeros(0)
    stats = {k: (float(v) if isinstance(v, (int, float, np.number)) else v)
             for k, v in result.stats.items() if isinstance(v, (int, float, np.number, str))}
    return {"n_grains": int(len(grains)),
            "median_completeness": float(np.median(completeness)) if completeness.size else 0.0,
            "min_completeness": float(completeness.min()) if completeness.size else 0.0,
            "threshold": float(result.threshold),
            "voxel_size": float(result.grainmap.spacing[0]), "stats": stats}


def store_grainmap(client, node_key: str, result, extra: dict | None = None,
                   status: str = "complete"):
    """Write ``result`` as ``processed/<node_key>/grainmap``; ``status`` goes last.

    An existing ``grainmap`` node (an earlier reconstruction of the same run, or a partial
    map of the live grain map) has its map and grain table rewritten (other entries, such
    as the live map's ``updates`` table, stay); its ``status`` reads ``running`` meanwhile,
    so a reader that sees ``complete`` (or ``partial``, a live map's update) sees one whole
    map.
    """
    key = check_key(node_key, "processed node key")
    node = client["processed"][key]
    summary = {**grainmap_summary(result), **(extra or {})}
    if GRAINMAP_KEY in node:
        container = node[GRAINMAP_KEY]
        container.update_metadata({"status": "running"})
        stale = [k for k in ("grain_id", "completeness", "grains") if k in container]
        if stale:
            container.delete_contents(stale, external_only=False)
    else:
        container = node.create_container(GRAINMAP_KEY, metadata={
            "status": "running", "description": "grain map reconstructed from the binary "
            "frames (labdct_live.reconstruction)"})
    grain_ids = np.ascontiguousarray(result.grainmap.grain_ids, dtype=np.int32)
    container.write_array(grain_ids, key="grain_id", dims=["z", "y", "x"],
                          metadata={"description": "grain id per voxel, 0 = unassigned"})
    if result.grainmap.completeness is not None:
        container.write_array(
            np.ascontiguousarray(result.grainmap.completeness, dtype=np.float32),
            key="completeness", dims=["z", "y", "x"],
            metadata={"description": "completeness of each voxel's grain"})
    if len(result.grains):
        container.write_table(result.grains.reset_index(drop=True), key="grains",
                                  metadata={"description": "one row per grain"})
    container.update_metadata({**summary, "status": status})
    return container
