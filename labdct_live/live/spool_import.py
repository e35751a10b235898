"""Writing to the catalog what a catalog that stayed away never received.

A live session keeps on local disk what it could not write: the raw run's documents
(``raw-<uid>.docs``, by :class:`~labdct_live.callbacks.raw_writer.ResilientTiledWriter`) and
the processed results (``<node>/results/``, by
:class:`~labdct_live.catalog.processed.ProcessedRunWriter`, described by its ``run.json``).
:func:`import_spool` writes both once the catalog is back (``labdct-live import-spool``) and
removes what it wrote from the spool.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from labdct_live.catalog.processed import ProcessedRunWriter
from labdct_live.io.names import check_key
from labdct_live.io.wire import read_documents

__all__ = ["import_spool", "import_raw_run"]

logger = logging.getLogger(__name__)


def import_raw_run(client, path: str | os.PathLike) -> str:
    """Write the raw run kept in the document file ``path`` to ``client``; returns its uid.

    A partial run of the same uid in the catalog (written before the outage) is replaced.
    """
    from bluesky_tiled_plugins import TiledWriter

    documents = list(read_documents(path))
    if not documents or documents[0][0] != "start":
        raise ValueError(f"{path} does not begin with a start document")
    uid = check_key(documents[0][1].get("uid"), "run uid")
    if uid in client:
        client.delete_contents(uid, recursive=True, external_only=False)
    writer = TiledWriter(client)
    for name, doc in documents:
        writer(name, doc)
    return uid


def import_spool(client, spool_dir: str | os.PathLike, timeout: float = 60.0) -> dict:
    """Write every raw run and processed result waiting in ``spool_dir`` to ``client``.

    Parameters
    ----------
    client : tiled client root
    spool_dir : path-like
        A session's spool (``<workdir>/spool``), or one run's results folder.
    timeout : float
        Seconds to wait for a catalog that does not answer, per processed node.

    Returns
    -------
    dict
        ``{"raw_runs": [uid, ...], "processed": {node: status}, "left": [path, ...]}``;
        ``left`` lists the spools that could not be written (still on disk).
    """
    spool_dir = Path(spool_dir)
    if not spool_dir.is_dir():
        raise FileNotFoundError(f"no spool folder {spool_dir}")
    report: dict = {"raw_runs": [], "processed": {}, "left": []}
    for path in sorted(spool_dir.rglob("raw-*.docs")):
        report["raw_runs"].append(import_raw_run(client, path))
        path.unlink()
        logger.info("raw run %s written from %s", report["raw_runs"][-1], path)
    for description in sorted(spool_dir.rglob("run.json")):
        writer = ProcessedRunWriter.from_spool(client, description.parent)
        final = dict(writer.final or {"status": "incomplete", "counts": {},
                                      "note": "the session ended before the run did"})
        status, counts = final.pop("status"), final.pop("counts", {})
        if writer.finalize(status, counts, timeout, {**final, "imported_from_spool": True}):
            report["processed"][writer.node_key] = status
        else:
            report["left"].append(str(description.parent))
    return report
