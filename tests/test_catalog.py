"""The embedded catalog under concurrent writers, and the processed writer's retries."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from labdct_live.catalog.processed import FRAME_SCHEMA, ProcessedRunWriter, frame_row
from labdct_live.catalog.server import CatalogServer
from labdct_live.segmentation.spot_schema import SPOT_TABLE_COLUMNS

SHAPE = (32, 32)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with CatalogServer(tmp_path_factory.mktemp("catalog")) as server:
        yield server


@pytest.fixture
def no_client_retries(monkeypatch):
    """A failed request fails the caller at once, so a lock conflict cannot hide behind
    tiled's own retries."""
    import tiled.client.utils

    monkeypatch.setattr(tiled.client.utils, "TILED_RETRY_ATTEMPTS", 1)


def test_concurrent_appends_from_two_writers_all_succeed(server, no_client_retries):
    """Two threads append to two tables of the same SQLite store at once, as the raw and
    processed writers do during a scan. tiled's own SQLite connections fail a conflicting
    write at once ("database is locked", HTTP 500); ours wait for the lock."""
    root = server.client()
    container = root.create_container("concurrency")
    tables = [container.create_appendable_table(FRAME_SCHEMA, key=f"t{k}") for k in (0, 1)]
    n_rows = 60
    errors: list[BaseException] = []

    def append(table) -> None:
        for i in range(n_rows):
            row = frame_row(i, float(i), 1.0, "ok", {"n_spots": i}, 0.0)
            try:
                table.append_partition(0, pa.Table.from_pylist([row], schema=FRAME_SCHEMA))
            except httpx.HTTPStatusError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=append, args=(t,)) for t in tables]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, f"{len(errors)} appends failed, first: {errors[0]}"
    for table in tables:
        assert sorted(table.read().frame) == list(range(n_rows))


def _spots(n: int) -> pd.DataFrame:
    """A spot table of ``n`` spots with every measured column."""
    table = pd.DataFrame({c: np.ones(n) for c in SPOT_TABLE_COLUMNS})
    return table.assign(label=np.arange(1, n + 1), area=np.full(n, 4))


def test_a_result_written_in_part_is_completed_without_duplicates(server, tmp_path):
    """The spots of a frame reach the catalog, its row does not (the server fails): the
    retry writes the row and not the spots again."""
    writer = ProcessedRunWriter(server.client(), "partial", 2, {}, tmp_path / "spool",
                                retry_interval=0.0, frame_shape=SHAPE)
    binary = np.ones(SHAPE, np.uint8)
    writer._ensure_nodes(SHAPE)
    frames_table = writer._frames
    append_row = frames_table.append_partition
    calls = {"n": 0}

    def failing_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            request = httpx.Request("PATCH", server.uri)
            raise httpx.HTTPStatusError("500 database is locked", request=request,
                                        response=httpx.Response(500, request=request))
        return append_row(*args, **kwargs)

    frames_table.append_partition = failing_once
    row = frame_row(0, 0.0, 1.0, "ok", {"n_spots": 3}, 0.1)
    assert writer.write(0, binary, row, _spots(3)) == "spooled"
    assert writer.pending == 1
    assert len(writer._spots.read()) == 3  # the spots went in before the failure

    row1 = frame_row(1, 2.0, 1.0, "ok", {"n_spots": 2}, 0.1)
    assert writer.write(1, binary, row1, _spots(2)) == "written"  # flushes the spool first
    assert writer.pending == 0 and writer.spooled_total == 1
    spots = writer._spots.read()
    assert sorted(spots.frame) == [0, 0, 0, 1, 1]
    assert sorted(writer._frames.read().frame) == [0, 1]
    assert writer.finalize("complete", {"processed": 2})
    assert writer._node.metadata["status"] == "complete"


def test_a_taken_port_moves_a_new_server_and_fails_a_given_one(tmp_path, monkeypatch):
    """Between choosing a free port and the server binding it, another process may take it."""
    import socket

    import labdct_live.catalog.server as catalog

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        choices = iter([taken])
        free_port = catalog._free_port
        monkeypatch.setattr(catalog, "_free_port",
                            lambda host: next(choices, None) or free_port(host))
        with CatalogServer(tmp_path / "moved") as server:
            assert server.port != taken and server.client() is not None
        with pytest.raises(catalog.CatalogUnavailable, match=f"port {taken} is in use"):
            CatalogServer(tmp_path / "given", port=taken).start()
