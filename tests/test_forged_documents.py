"""Names taken from documents never become paths or catalog keys unchecked."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from labdct_live.callbacks.live import LiveConfig, live_router
from labdct_live.catalog.server import CatalogServer
from labdct_live.io.names import check_key, is_safe_key, safe_key
from labdct_live.segmentation.routine import RoutineParams

SHAPE = (48, 48)
N = 5


@pytest.mark.parametrize("name", ["../victim", "../../../../SOMEWHERE", "a/b", ".hidden",
                                  "", "x" * 200, "..", "a..b", "a\\b", "a\x00b", 12, None])
def test_unsafe_names_are_refused_or_replaced(name):
    assert not is_safe_key(name)
    with pytest.raises(ValueError, match="not a safe name"):
        check_key(name)
    replaced = safe_key(name)
    assert replaced.startswith("unsafe-") and is_safe_key(replaced)
    assert safe_key(name) == replaced  # stable: all documents of a run map to one key


def _forged_run(uid: str, keys: bool = True) -> list[tuple[str, dict]]:
    """A run of ``N`` embedded frames whose start document carries ``uid`` (and names the
    image and rotation keys unless ``keys`` is false)."""
    rng = np.random.default_rng(0)
    now = time.time()
    descriptor = {"uid": "d-" + str(abs(hash(uid))), "run_start": uid, "time": now,
                  "name": "primary",
                  "data_keys": {"det_image": {"dtype": "array", "shape": list(SHAPE),
                                              "source": "sim"},
                                "rotation": {"dtype": "number", "shape": [], "source": "sim"}}}
    start = {"uid": uid, "time": now, "n_projections": N}
    if keys:
        start.update(image_key="det_image", rotation_key="rotation")
    docs = [("start", start),
            ("descriptor", descriptor)]
    for i in range(N):
        frame = rng.poisson(100, SHAPE).astype(np.float32)
        frame[20:24, 20:24] += 400
        docs.append(("event", {"uid": f"e{i}", "descriptor": descriptor["uid"], "seq_num": i + 1,
                               "time": now, "timestamps": {}, "filled": {},
                               "data": {"det_image": frame, "rotation": float(i)}}))
    docs.append(("stop", {"uid": "s", "run_start": uid, "time": now, "exit_status": "success"}))
    return docs


def test_a_forged_uid_writes_nothing_outside_the_spool_or_into_another_node(tmp_path, caplog):
    """``uid = "../../../../SOMEWHERE"`` once made the processor create folders four levels
    above its spool, and ``"../victim"`` wrote into another catalog node."""
    spool = tmp_path / "a" / "b" / "c" / "d" / "spool"
    with CatalogServer(tmp_path / "catalog") as server:
        client = server.client()
        victim = client.create_container("processed").create_container(
            "victim", metadata={"status": "complete", "owner": "someone else"})
        processors = []
        router = live_router(LiveConfig(
            client=server.client(), method="routine", spool_dir=spool,
            method_options={"routine_params": RoutineParams(window=3, sigma=1.0, min_size=3)},
            finalize_timeout=30), processors)
        with caplog.at_level(logging.WARNING, logger="labdct_live"):
            for uid in ("../../../../SOMEWHERE", "../victim"):
                for name, doc in _forged_run(uid):
                    router(name, doc)
            assert all(p.wait(60) for p in processors)

        # Nothing outside the spool: only the spool and the catalog under tmp_path.
        assert not (tmp_path / "SOMEWHERE").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "catalog"]
        assert all(is_safe_key(p.name) for p in spool.iterdir())
        # The victim node is untouched; the forged runs went to keys of their own, processed.
        victim = client["processed"]["victim"]
        assert dict(victim.metadata) == {"status": "complete", "owner": "someone else"}
        assert list(victim) == []
        keys = [k for k in client["processed"] if k != "victim"]
        assert len(keys) == 2 and all(k.startswith("unsafe-") for k in keys)
        for p in processors:
            assert p.counts["processed"] == N, p.errors
            assert client["processed"][p.node_key].metadata["raw_uid"] == p.raw_uid
    assert "is not a safe name" in caplog.text


@pytest.mark.parametrize("configured", [False, True])
def test_the_image_key_is_read_never_guessed(tmp_path, configured):
    """A run whose start document names no image key is not processed (status ``failed``,
    the reason given), unless the user names the key; a 2-D array is never picked by shape."""
    with CatalogServer(tmp_path / "catalog") as server:
        processors = []
        router = live_router(LiveConfig(
            client=server.client(), method="routine", spool_dir=tmp_path / "spool",
            image_key="det_image" if configured else None,
            rotation_key="rotation" if configured else None,
            method_options={"routine_params": RoutineParams(window=3, sigma=1.0, min_size=3)},
            finalize_timeout=30), processors)
        for name, doc in _forged_run("run-without-keys", keys=False):
            router(name, doc)
        processor = processors[0]
        assert processor.done.wait(60) and processor.wait() is configured
        if configured:
            assert processor.status == "complete" and processor.counts["processed"] == N
            frames = server.client()["processed"]["run-without-keys"]["frames"].read()
            assert sorted(frames["omega"]) == [float(i) for i in range(N)]
        else:
            assert processor.status == "failed" and processor.counts["received"] == 0
            assert any("image_key" in e for e in processor.errors)
            frames = server.client()["processed"]["run-without-keys"]["frames"].read()
            assert len(frames) == N and all(frames["status"].str.contains("no image key"))
