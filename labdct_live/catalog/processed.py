"""Processed results in the tiled catalog: the ``processed/<raw uid>`` layout, writer, spool.

Layout (readable with a plain ``tiled.client``, no labdct_live import)::

    processed/                      container
      <node>/                       container; <node> = the raw run's uid (live processing)
                                    or "<uid>-replay-<UTC time>" (a replay)
        metadata: raw_uid, method, parameters, model name/version/hash, package version,
                  n_frames, frame_shape, status ("running" | "complete" |
                  "complete-with-errors"), counts (received, processed, failed, spooled)
        binary    uint8 array (frame, y, x), chunk = one frame, 1 = spot
        frames    table, one row per frame: frame, omega, exposure, status, n_spots,
                  snr_mean, snr_sd, snr_p5, snr_p25, snr_p50, snr_p75, snr_p95, n_weak,
                  fraction_weak, processing_seconds
        spots     table, one row per spot: the columns of
                  :data:`labdct_live.segmentation.spot_schema.SPOT_COLUMNS`

Writing: the binary array is pre-allocated and written one block (frame) at a time; table
rows are appended. When the catalog cannot be reached, results go to a spool directory on
local disk (one ``.npz`` per frame, written atomically) and are written, in order, as soon as
the catalog answers again — every frame in is accounted for out. A spool that cannot be
written (disk full) keeps the results in memory instead, and says so in the node's
``counts``. The spool's ``run.json`` describes the node, so that
``labdct-live import-spool`` can write what a catalog that stayed away never received.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa

from labdct_live import __version__
from labdct_live.catalog.errors import CATALOG_ERRORS, describe_catalog_error
from labdct_live.io.names import check_key
from labdct_live.io.output import atomic_file
from labdct_live.segmentation.spot_schema import SPOT_COLUMNS, conform_spots

__all__ = ["FRAME_SCHEMA", "SPOT_SCHEMA", "ProcessedRunWriter", "frame_row",
           "frames_in_catalog"]

logger = logging.getLogger(__name__)

FRAME_SCHEMA = pa.schema([
    ("frame", pa.int64()), ("omega", pa.float64()), ("exposure", pa.float64()),
    ("status", pa.string()), ("n_spots", pa.int64()),
    ("snr_mean", pa.float64()), ("snr_sd", pa.float64()), ("snr_p5", pa.float64()),
    ("snr_p25", pa.float64()), ("snr_p50", pa.float64()), ("snr_p75", pa.float64()),
    ("snr_p95", pa.float64()), ("n_weak", pa.int64()), ("fraction_weak", pa.float64()),
    ("processing_seconds", pa.float64()),
])

#: The catalog's spot table: :data:`labdct_live.segmentation.spot_schema.SPOT_COLUMNS` as Arrow
#: types.
SPOT_SCHEMA = pa.schema([(c.name, pa.from_numpy_dtype(np.dtype(c.dtype)))
                         for c in SPOT_COLUMNS])

def frames_in_catalog(client, node: str) -> set[int]:
    """Frames that already have a row in ``processed/<node>`` (written by a worker before
    this one); empty when the node or the catalog is not there."""
    try:
        processed = client["processed"]
        if node not in processed or "frames" not in processed[node]:
            return set()
        return {int(i) for i in processed[node]["frames"].read()["frame"]}
    except (*CATALOG_ERRORS, KeyError) as exc:
        logger.warning("cannot read the frames already in processed/%s: %s", node,
                       describe_catalog_error(exc))
        return set()


def frame_row(index: int, omega: float, exposure: float, status: str, summary: dict | None,
              seconds: float) -> dict:
    """One row of the per-frame table."""
    s = summary or {}
    nan = float("nan")
    return {"frame": int(index), "omega": float(omega), "exposure": float(exposure),
            "status": status, "n_spots": int(s.get("n_spots", 0)),
            "snr_mean": s.get("mean", nan), "snr_sd": s.get("sd", nan),
            "snr_p5": s.get("p5", nan), "snr_p25": s.get("p25", nan),
            "snr_p50": s.get("p50", nan), "snr_p75": s.get("p75", nan),
            "snr_p95": s.get("p95", nan), "n_weak": int(s.get("n_below", 0)),
            "fraction_weak": s.get("fraction_below", nan), "processing_seconds": float(seconds)}


def _spot_rows(index: int, spots: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(conform_spots(spots, frame=index), schema=SPOT_SCHEMA,
                                preserve_index=False)


@dataclass
class _Result:
    index: int
    binary: np.ndarray | None
    row: dict
    spots: pd.DataFrame | None
    #: Parts already in the catalog ("binary", "spots"): appends are not idempotent, so a
    #: retry after a partial write must not append the spot rows a second time.
    written: set[str] = field(default_factory=set)


class ProcessedRunWriter:
    """Writes one run's processed results to ``processed/<node>`` with a disk spool.

    Parameters
    ----------
    client : tiled client root
    node : str
        Key under ``processed`` (the raw uid for live processing).
    n_frames : int
        Frames expected (the binary array is pre-allocated).
    metadata : dict
        Provenance stored on the node.
    spool_dir : path-like
        Where results wait while the catalog is unreachable.
    retry_interval : float
        Seconds between attempts to reach the catalog while it is away.
    frame_shape : (int, int), optional
        Known frame shape (from the descriptor); otherwise taken from the first good frame.
    """

    def __init__(self, client, node: str, n_frames: int, metadata: dict,
                 spool_dir: str | os.PathLike, retry_interval: float = 2.0,
                 frame_shape: tuple[int, int] | None = None):
        if n_frames < 1:
            raise ValueError(f"n_frames must be positive, got {n_frames}")
        self.client = client
        self.node_key = node
        self.n_frames = int(n_frames)
        self.metadata = {**metadata, "package_version": __version__, "status": "running",
                         "n_frames": self.n_frames}
        self.spool_dir = Path(spool_dir)
        self.retry_interval = retry_interval
        self._node = None
        self._binary = None
        self._frames = None
        self._spots = None
        self._shape = tuple(int(v) for v in frame_shape) if frame_shape else None
        self._finishing = False
        self._down_since: float | None = None
        self._last_try = 0.0
        self.written = 0
        self.spooled_total = 0
        self.spool_errors = 0  #: results kept in memory because the spool was not writable
        self._held: list[_Result] = []  # those results
        self.final: dict | None = None  #: final metadata of a node read back from its spool
        self._save_description()

    # ----------------------------------------------------------------- the spool's run.json
    def _save_description(self, final: dict | None = None) -> None:
        """Write ``run.json``: what :meth:`from_spool` needs to finish the node later."""
        description = {"node": self.node_key, "n_frames": self.n_frames,
                       "metadata": self.metadata, "frame_shape": self._shape, "final": final}
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            with atomic_file(self.spool_dir / "run.json") as tmp:
                tmp.write_text(json.dumps(description, default=str))
        except OSError as exc:
            logger.error("cannot write %s (%s)", self.spool_dir / "run.json", exc)

    @classmethod
    def from_spool(cls, client, spool_dir: str | os.PathLike) -> ProcessedRunWriter:
        """The writer of the node a spool belongs to (its ``run.json``), to write the spooled
        results with :meth:`finalize`."""
        spool_dir = Path(spool_dir)
        try:
            description = json.loads((spool_dir / "run.json").read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{spool_dir} is not a results spool of labdct-live ({exc})") \
                from None
        metadata = {k: v for k, v in description["metadata"].items()
                    if k not in ("status", "n_frames", "package_version")}
        writer = cls(client, check_key(description["node"], "spooled node"),
                     description["n_frames"], metadata, spool_dir,
                     frame_shape=description["frame_shape"])
        writer.final = description.get("final")
        return writer

    # ------------------------------------------------------------------ catalog nodes
    def _ensure_nodes(self, shape: tuple[int, int] | None) -> None:
        """Create the node and its tables; its ``binary`` array too once the frame shape is
        known (a run none of whose frames could be read has rows but no masks)."""
        from tiled.structures.array import ArrayStructure, BuiltinDtype
        from tiled.structures.core import StructureFamily
        from tiled.structures.data_source import DataSource

        if self._node is not None:
            return
        root = self.client
        processed = root["processed"] if "processed" in root else root.create_container(
            "processed", metadata={"description": "labdct-live processed LabDCT scans"})
        if self.node_key in processed:
            node = processed[self.node_key]
        else:
            node = processed.create_container(
                self.node_key, metadata={**self.metadata,
                                         "frame_shape": list(shape) if shape else None})
        if "binary" not in node and shape is not None:
            structure = ArrayStructure(
                shape=(self.n_frames, *shape), chunks=((1,) * self.n_frames, (shape[0],),
                                                       (shape[1],)),
                dims=["frame", "y", "x"], data_type=BuiltinDtype.from_numpy_dtype(np.dtype("u1")))
            node.new(StructureFamily.array, [DataSource(structure=structure,
                                                        structure_family=StructureFamily.array)],
                     key="binary", metadata={"description": "spot masks, 1 = spot"})
        if "frames" not in node:
            node.create_appendable_table(FRAME_SCHEMA, key="frames")
        if "spots" not in node:
            node.create_appendable_table(SPOT_SCHEMA, key="spots")
        self._binary = node["binary"] if "binary" in node else None
        self._frames, self._spots = node["frames"], node["spots"]
        self._node = node

    def _grow(self, result: _Result) -> None:
        """Write a frame beyond the planned ones (a plan that re-takes frames, e.g.
        ``quality_scan`` after raising the exposure): the ``binary`` array grows to hold it
        (zeros between) and ``n_frames`` follows."""
        self._binary.patch(result.binary[None], offset=(result.index, 0, 0), extend=True)
        self.n_frames = self.metadata["n_frames"] = result.index + 1
        self._node.update_metadata({"n_frames": self.n_frames})
        self._save_description()
        self._binary = self._node["binary"]  # the client's structure has the new shape

    def _write_now(self, result: _Result) -> None:
        """Write the parts of ``result`` not yet written; the frame row goes last, so a row
        in the catalog means the frame is complete there."""
        if result.binary is not None:
            self._ensure_nodes(result.binary.shape)
            if "binary" not in result.written:
                if result.index >= self._binary.shape[0]:
                    self._grow(result)
                else:
                    self._binary.write_block(result.binary[None], block=(result.index, 0, 0))
                result.written.add("binary")
        else:
            if self._shape is None and not self._finishing:
                raise _NotReady  # rows wait for the first mask, which gives the frame shape
            self._ensure_nodes(self._shape)
        if result.spots is not None and len(result.spots) and "spots" not in result.written:
            self._spots.append_partition(0, _spot_rows(result.index, result.spots))
            result.written.add("spots")
        self._frames.append_partition(0, pa.Table.from_pylist([result.row], schema=FRAME_SCHEMA))
        self.written += 1

    # ---------------------------------------------------------------------------- spool
    def _spool_files(self) -> list[Path]:
        return sorted(self.spool_dir.glob("frame_*.npz"))

    def _spool(self, result: _Result, again: bool = False) -> None:
        """Keep ``result`` on disk until the catalog answers; in memory when the disk fails."""
        path = self.spool_dir / f"frame_{result.index:06d}.npz"
        spots = result.spots if result.spots is not None else pd.DataFrame()
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            with atomic_file(path) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, index=result.index,
                         binary=(result.binary if result.binary is not None
                                 else np.zeros((0, 0), np.uint8)),
                         row=json.dumps(result.row), spots=spots.to_json(orient="split"),
                         written=json.dumps(sorted(result.written)))
        except OSError as exc:  # disk full, read-only: hold it in memory, say so
            self.spool_errors += 1
            if self.spool_errors == 1:
                logger.error("cannot spool results to %s (%s); keeping them in memory",
                             self.spool_dir, exc)
            self._held.append(result)
        self.spooled_total += not again

    @staticmethod
    def _unspool(path: Path) -> _Result:
        with np.load(path, allow_pickle=False) as z:
            binary = z["binary"]
            spots = pd.read_json(io.StringIO(str(z["spots"])), orient="split")
            return _Result(int(z["index"]), binary if binary.size else None,
                           json.loads(str(z["row"])), spots, set(json.loads(str(z["written"]))))

    @property
    def pending(self) -> int:
        """Results waiting for the catalog (spooled on disk or held in memory)."""
        return len(self._held) + len(self._spool_files())

    def _try_flush(self, force: bool = False) -> bool:
        """Write waiting results; True when none is left."""
        n = self.pending
        if not n:
            self._down_since = None
            return True
        now = time.monotonic()
        if not force and now - self._last_try < self.retry_interval:
            return False
        self._last_try = now
        try:
            httpx.get(f"{self._base_uri()}/healthz", timeout=2.0).raise_for_status()
            while self._held:
                self._write_now(self._held[0])  # a failure keeps it (and what it wrote)
                self._held.pop(0)
            for path in self._spool_files():
                result = self._unspool(path)
                try:
                    self._write_now(result)
                except BaseException:
                    self._spool(result, again=True)  # keeps the parts written this time
                    raise
                path.unlink()
        except _NotReady:
            return False
        except CATALOG_ERRORS as exc:
            logger.info("%s; %d results waiting", describe_catalog_error(exc), self.pending)
            return False
        logger.warning("catalog back: wrote %d waiting results", n)
        self._down_since = None
        return True

    def _base_uri(self) -> str:
        return str(self.client.context.api_uri).rstrip("/").removesuffix("/api/v1")

    # ----------------------------------------------------------------------------- API
    def write(self, index: int, binary: np.ndarray | None, row: dict,
              spots: pd.DataFrame | None) -> str:
        """Write one frame's results, or spool them; returns ``"written"`` or ``"spooled"``.

        ``binary`` is None for a frame that failed (its row records the error; the binary
        array keeps zeros there).
        """
        if binary is not None:
            self._shape = tuple(binary.shape)
        result = _Result(index, binary, row, spots)
        if self._down_since is not None or self.pending:
            if not self._try_flush():
                self._spool(result)
                return "spooled"
        try:
            self._write_now(result)
            return "written"
        except _NotReady:
            self._spool(result)
            return "spooled"
        except CATALOG_ERRORS as exc:
            logger.warning("%s: spooling results to %s", describe_catalog_error(exc),
                           self.spool_dir)
            self._down_since = time.monotonic()
            self._last_try = time.monotonic()
            self._spool(result)
            return "spooled"

    def finalize(self, status: str, counts: dict, timeout: float = 120.0,
                 extra: dict | None = None) -> bool:
        """Write what waits (retrying up to ``timeout`` s), then the node's final ``status``,
        ``counts`` and ``extra`` metadata.

        Returns False when results are still waiting (the catalog stayed away): those on disk
        stay in :attr:`spool_dir` with the final metadata in its ``run.json``, for
        ``labdct-live import-spool``; those held in memory are lost with the process.
        """
        final = {"status": status, "counts": counts, **(extra or {})}
        self._finishing = True  # no mask will come now: rows go without one
        deadline = time.monotonic() + timeout
        while not self._try_flush(force=True):
            if time.monotonic() > deadline:
                logger.error("the catalog stayed away for %.0f s: %d results wait in %s "
                             "(%d of them only in memory)", timeout, self.pending,
                             self.spool_dir, len(self._held))
                self._save_description(final)
                return False
            time.sleep(self.retry_interval)
        try:
            if self._node is None and self._shape is not None:
                self._ensure_nodes(self._shape)
            if self._node is not None:
                self._node.update_metadata(final)
        except CATALOG_ERRORS as exc:
            logger.error("could not write the processed node's final status: %s",
                         describe_catalog_error(exc))
            self._save_description(final)
            return False
        self._remove_spool()
        return True

    def _remove_spool(self) -> None:
        """The spool of a finished node: nothing waits there any more."""
        (self.spool_dir / "run.json").unlink(missing_ok=True)
        try:
            self.spool_dir.rmdir()
        except OSError:
            pass  # not empty (another file) or already gone: leave it


class _NotReady(Exception):
    """A failed frame arrived before any good one: the array shape is not known yet."""
