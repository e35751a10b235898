"""Replay: re-process a stored run from the catalog through the live processor.

The raw run's documents come back from tiled (``run.documents()``, the json-seq exporter) and
go through the same :class:`~labdct_live.callbacks.live.LiveProcessor` as during the scan.
Replayed documents are rebuilt by tiled, not the originals, so frames are read through tiled
by frame index (``run["primary"][image_key][i]``) and results are keyed by that index.
Results go to a new node ``processed/<uid>-replay-<UTC time>``; when the run was processed
live, the replay reports its agreement with that original processing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from labdct_live.callbacks.live import LiveConfig, LiveProcessor
from labdct_live.io.names import safe_key

__all__ = ["replay_run", "agreement", "ReplayResult", "image_key_of", "resolve_run_uid",
           "RunNotFound"]

logger = logging.getLogger(__name__)


@dataclass
class ReplayResult:
    raw_uid: str
    node_key: str
    processor: LiveProcessor
    agreement: pd.DataFrame | None  #: per frame, against the original processing (or None)

    def summary(self) -> dict:
        out = {"raw_uid": self.raw_uid, "node": f"processed/{self.node_key}",
               **self.processor.counts}
        if self.agreement is not None and len(self.agreement):
            a = self.agreement
            out.update(frames_compared=len(a), identical_frames=int(a.identical.sum()),
                       mean_iou=float(a.iou.mean()), min_iou=float(a.iou.min()),
                       spot_count_difference=int(
                           (a.n_spots_replay - a.n_spots_original).abs().sum()))
        return out


def image_key_of(stream) -> str:
    """The data key of the detector images in a tiled event stream (the 3-D array)."""
    for key in stream:
        try:
            if len(stream[key].shape) == 3:
                return key
        except (AttributeError, TypeError):
            continue
    raise KeyError("no image (3-D array) in the run's primary stream")


class RunNotFound(ValueError):
    """No run, or more than one, has the given uid or uid prefix."""


#: Top-level catalog nodes that are not raw runs.
_NOT_RUNS = frozenset({"processed"})


def resolve_run_uid(client, uid: str, shown: int = 5) -> str:
    """The catalog key of the raw run whose uid is, or starts with, ``uid``.

    Parameters
    ----------
    client : tiled client root
    uid : str
        A full uid or a prefix of one (e.g. the first 8 characters).
    shown : int
        How many candidates an error message lists.

    Returns
    -------
    str
        The run's key in ``client``.

    Raises
    ------
    RunNotFound
        When no run or several runs match; the message lists candidates.
    """
    uid = uid.strip()
    if not uid:
        raise RunNotFound("give a run uid or a prefix of one")
    if uid not in _NOT_RUNS and uid in client:
        return uid
    # tiled has no prefix query on keys: list them (one paginated request per ~100 runs).
    keys = [key for key in client.keys() if key not in _NOT_RUNS]
    matches = [key for key in keys if key.startswith(uid)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        listed = ", ".join(keys[-shown:]) or "none"
        raise RunNotFound(f"no run whose uid starts with {uid!r} in the catalog "
                          f"({len(keys)} runs, e.g. {listed})")
    listed = ", ".join(matches[:shown]) + (" ..." if len(matches) > shown else "")
    raise RunNotFound(f"uid prefix {uid!r} matches {len(matches)} runs ({listed}); give more "
                      "characters")


def agreement(client, original: str, replay: str) -> pd.DataFrame:
    """Per-frame agreement of two processed nodes: identical masks, IoU, spot counts."""
    a, b = client["processed"][original], client["processed"][replay]
    fa = a["frames"].read().set_index("frame").sort_index()
    fb = b["frames"].read().set_index("frame").sort_index()
    rows = []
    for i in sorted(set(fa.index) & set(fb.index)):
        ma, mb = np.asarray(a["binary"][i]) > 0, np.asarray(b["binary"][i]) > 0
        union = np.count_nonzero(ma | mb)
        rows.append({"frame": i, "identical": bool(np.array_equal(ma, mb)),
                     "iou": np.count_nonzero(ma & mb) / union if union else 1.0,
                     "n_spots_original": int(fa.at[i, "n_spots"]),
                     "n_spots_replay": int(fb.at[i, "n_spots"])})
    return pd.DataFrame(rows)


def replay_run(client, raw_uid: str, method: str = "routine", *, method_options=None,
               image_key: str | None = None, spool_dir=None, listeners=(), end_of_scan=(),
               compare_with: str | None = "auto", progress: bool = True) -> ReplayResult:
    """Re-process run ``raw_uid`` of ``client`` into a new processed node.

    Parameters
    ----------
    client : tiled client root
    raw_uid : str
        The raw run (a unique prefix of its uid works too).
    method, method_options
        As for :class:`~labdct_live.callbacks.live.LiveConfig`.
    image_key : str, optional
        Data key of the images; when None, the start document's ``image_key``, else the
        primary stream's 3-D array.
    compare_with : str or None
        Processed node to compare with; ``"auto"``: ``processed/<raw uid>`` when present.
    """
    run = client[resolve_run_uid(client, raw_uid)]
    raw_uid = run.metadata["start"]["uid"]
    stream = run["primary"]
    # the key the plan named; a run without one: its only image (3-D array) stream
    image_key = image_key or run.metadata["start"].get("image_key") or image_key_of(stream)
    images = stream[image_key]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    node_key = f"{safe_key(raw_uid, 'run uid')}-replay-{stamp}"
    config = LiveConfig(client=client, method=method, method_options=dict(method_options or {}),
                        image_key=image_key, spool_dir=spool_dir, listeners=list(listeners),
                        end_of_scan=list(end_of_scan), node_key=lambda uid: node_key,
                        extra_metadata={"replay_of": raw_uid},
                        frame_source=lambda i: np.asarray(images[i]))
    processor = LiveProcessor(config)
    n = int(images.shape[0])
    with tqdm(total=n, desc="replay", unit="frame", disable=not progress) as bar:
        for name, doc in run.documents():
            processor(name, doc)
            if name == "event":
                bar.update(1)
    processor.wait()
    if compare_with == "auto":
        compare_with = raw_uid if raw_uid in client["processed"] else None
    table = agreement(client, compare_with, node_key) if compare_with else None
    return ReplayResult(raw_uid, node_key, processor, table)
