"""Following a run live: a snapshot of a run in the catalog, its figure, and a polling loop.

A client that did not start the scan (a notebook, ``labdct-live watch``) follows it through
the catalog alone: the latest raw frame (``client[uid]``), its segmentation and the SNR
trace (``processed/<uid>``), and the middle slice of the grain map as far as it has been
made (``processed/<uid>/grainmap``). It polls (:func:`watch` says why).

Consistency: the grain map is read only while its metadata ``status`` is ``"partial"`` (a
live update) or ``"complete"``; its metadata is read again after the arrays, and a read
during which ``status`` or ``live_update`` changed is retried, so a snapshot never mixes two
updates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labdct_live.io.names import check_key, is_safe_key

__all__ = ["GRAINMAP_READABLE", "RUNNING_STATUSES", "RunSnapshot", "read_snapshot",
           "save_png", "snapshot_figure", "watch"]

logger = logging.getLogger(__name__)

#: Grain-map statuses whose arrays are whole ("running" = being written).
GRAINMAP_READABLE = frozenset({"partial", "complete"})
#: Statuses of a processed node that is still being written (None: no status yet).
RUNNING_STATUSES = frozenset({"running", "started", None})
#: Columns of the SNR trace, in this order.
TRACE_COLUMNS = ("frame", "omega", "status", "snr_p5", "snr_p50", "snr_p95", "n_spots")


@dataclass
class RunSnapshot:
    """What a run looks like in the catalog at one moment.

    Attributes
    ----------
    uid : str
        The raw run's uid (the key of ``processed/<uid>``).
    status : str or None
        The processed node's ``status`` (``"running"``, ``"complete"``, ...).
    n_frames : int or None
        Frames the run is expected to have (the node's ``n_frames``).
    n_processed : int
        Frames with a row in the ``frames`` table.
    latest_frame, latest_omega : int or float or None
        Index and rotation angle (degrees) of the latest processed frame.
    raw_frame, segmentation : numpy.ndarray or None
        That frame as the detector took it (None when the raw run is not readable), and its
        binary mask (uint8, 1 = spot; None before the first mask).
    trace : pandas.DataFrame
        The processed frames table sorted by frame (``frame``, ``omega``, ``status``,
        ``snr_p5``, ``snr_p50``, ``snr_p95``, ``n_spots``, ...).
    grainmap_status : str or None
        None (no grain map), ``"running"``, ``"partial"`` or ``"complete"``.
    grain_ids : numpy.ndarray or None
        Grain id per voxel (z, y, x), 0 = unassigned; only for a partial or complete map.
    live_update : int or None
        Number of the live grain-map update read.
    decision, reason : str or None
        The grain map's latest decision (e.g. ``"continue"``) and why.
    updates : pandas.DataFrame or None
        One row per live grain-map update.
    """

    uid: str
    status: str | None
    n_frames: int | None
    n_processed: int
    latest_frame: int | None
    latest_omega: float | None
    raw_frame: np.ndarray | None
    segmentation: np.ndarray | None
    trace: pd.DataFrame
    grainmap_status: str | None = None
    grain_ids: np.ndarray | None = None
    live_update: int | None = None
    decision: str | None = None
    reason: str | None = None
    updates: pd.DataFrame | None = None

    @property
    def signature(self) -> tuple:
        """What :func:`watch` compares to tell a new snapshot from the last one."""
        return (self.status, self.n_processed, self.grainmap_status, self.live_update)

    @property
    def finished(self) -> bool:
        """True when processing is over and the grain map, if any, is complete."""
        return (self.status not in RUNNING_STATUSES
                and self.grainmap_status in (None, "complete"))

    @property
    def latest_snr(self) -> float | None:
        """Median spot SNR of the latest processed frame (None before the first)."""
        # the trace is sorted by frame: the latest frame is its last row
        return None if self.latest_frame is None else float(self.trace["snr_p50"].iloc[-1])

    def summary(self) -> str:
        """One line: frames processed, latest SNR median, grain-map update and decision."""
        total = "?" if self.n_frames is None else self.n_frames
        parts = [f"run {self.uid[:8]}", f"{self.status or 'no status'}",
                 f"frames {self.n_processed}/{total}"]
        if self.latest_frame is not None:
            snr = self.latest_snr
            parts.append(f"latest {self.latest_frame} at {self.latest_omega:.1f} deg, "
                         f"SNR median {'n/a' if snr is None or np.isnan(snr) else f'{snr:.2f}'}")
        if self.grainmap_status is not None:
            parts.append(f"grain map {self.grainmap_status}, update "
                         f"{'-' if self.live_update is None else self.live_update}, decision "
                         f"{self.decision or '-'}")
        return " | ".join(parts)


# ----------------------------------------------------------------------------- reading
def _processed_node(client, uid: str):
    """``processed/<uid>``, fetched anew (tiled clients keep the metadata they were given)."""
    try:
        return client["processed"][uid]
    except KeyError:
        raise LookupError(f"run {uid!r} has no processed results in the catalog (no "
                          f"processed/{uid}); is the uid right, and is it being processed?"
                          ) from None


def _read_trace(node) -> pd.DataFrame:
    """The ``frames`` table sorted by frame; empty (with the trace columns) before it exists."""
    if "frames" not in node:
        return pd.DataFrame({c: pd.Series(dtype=object if c == "status" else float)
                             for c in TRACE_COLUMNS})
    table = node["frames"].read()  # rows in the order written
    # A frame re-processed by a second worker may have two rows: the last written counts.
    return (table.drop_duplicates("frame", keep="last").sort_values("frame")
            .reset_index(drop=True))


def _read_raw_frame(client, uid: str, index: int, timeout: float) -> np.ndarray | None:
    """Frame ``index`` of the raw run, or None when the raw run cannot be read."""
    from labdct_live.callbacks.readers import CatalogRunFrames
    from labdct_live.live.replay import image_key_of

    try:
        start = client[uid].metadata.get("start", {})
        image_key = start.get("image_key") or image_key_of(client[uid]["primary"])
        frames = CatalogRunFrames(client, uid, "primary", image_key, start.get("rotation_key"),
                                  start.get("exposure_key"), timeout=timeout)
        return np.asarray(frames.read(index)[0])
    except Exception as exc:  # noqa: BLE001 - any failure: the snapshot goes without it
        logger.info("run %s: raw frame %d not readable (%s: %s)", uid, index,
                    type(exc).__name__, exc)
        return None


def _read_segmentation(node, index: int) -> np.ndarray | None:
    if "binary" not in node:
        return None
    return np.asarray(node["binary"][index], dtype=np.uint8)


def _grainmap_metadata(client, uid: str) -> dict | None:
    """The grain map's metadata, fetched anew; None when the run has no grain map."""
    node = client["processed"][uid]
    if "grainmap" not in node:
        return None
    return dict(node["grainmap"].metadata)


def _read_grain_arrays(client, uid: str) -> tuple[np.ndarray, pd.DataFrame | None]:
    """``grain_id`` and the ``updates`` table of ``processed/<uid>/grainmap``."""
    container = client["processed"][uid]["grainmap"]
    grain_ids = np.asarray(container["grain_id"].read())
    updates = container["updates"].read() if "updates" in container else None
    return grain_ids, updates


def _grainmap_fields(meta: dict | None) -> dict[str, Any]:
    if meta is None:
        return {}
    live = meta.get("live_update")
    return {"grainmap_status": meta.get("status"),
            "live_update": None if live is None else int(live),
            "decision": meta.get("decision"), "reason": meta.get("reason")}


def _read_grainmap(client, uid: str, attempts: int = 4, pause: float = 0.2) -> dict[str, Any]:
    """The grain map's fields of :class:`RunSnapshot`, read consistently (module docstring).

    A map that keeps changing for ``attempts`` reads is reported by its metadata alone
    (``grain_ids`` None): the next snapshot will catch it at rest.
    """
    meta = None
    for attempt in range(attempts):
        meta = _grainmap_metadata(client, uid)
        fields = _grainmap_fields(meta)
        if meta is None or fields["grainmap_status"] not in GRAINMAP_READABLE:
            return fields
        try:
            grain_ids, updates = _read_grain_arrays(client, uid)
        except KeyError:  # an array is being replaced: read again
            grain_ids = updates = None
        after = _grainmap_fields(_grainmap_metadata(client, uid))
        same = all(after.get(k) == fields[k] for k in ("grainmap_status", "live_update"))
        if same and grain_ids is not None:
            return {**fields, "grain_ids": grain_ids, "updates": updates}
        logger.debug("run %s: the grain map changed while read (attempt %d)", uid, attempt + 1)
        time.sleep(pause)
    logger.warning("run %s: the grain map changed during %d reads; showing its metadata only",
                   uid, attempts)
    return _grainmap_fields(meta)


def read_snapshot(client, uid: str, *, raw_timeout: float = 1.0) -> RunSnapshot:
    """Read run ``uid`` as it is now in the catalog.

    Parameters
    ----------
    client : tiled client root
    uid : str
        The raw run's uid (the key of ``processed/<uid>``), or the key of a replay's node;
        the raw frame is read from the node's ``raw_uid``.
    raw_timeout : float
        Seconds to wait for the latest raw frame (the raw writer may lag behind).

    Returns
    -------
    RunSnapshot

    Raises
    ------
    ValueError
        ``uid`` is not a safe catalog key (``"../x"``, ``"a/b"``).
    LookupError
        The catalog holds no ``processed/<uid>``.

    Examples
    --------
    >>> snap = read_snapshot(client, uid)   # doctest: +SKIP
    >>> print(snap.summary())               # doctest: +SKIP
    """
    uid = check_key(uid, "run uid")
    node = _processed_node(client, uid)
    meta = dict(node.metadata)
    trace = _read_trace(node)
    latest = int(trace["frame"].iloc[-1]) if len(trace) else None
    raw = segmentation = omega = None
    if latest is not None:
        omega = float(trace["omega"].iloc[-1])
        segmentation = _read_segmentation(node, latest)
        # A replay's node (<uid>-replay-<time>) names its raw run; a name from the catalog
        # is checked like the user's before it becomes a key.
        raw_uid = meta.get("raw_uid") or uid
        if is_safe_key(raw_uid):
            raw = _read_raw_frame(client, raw_uid, latest, raw_timeout)
    n_frames = meta.get("n_frames")
    return RunSnapshot(uid=uid, status=meta.get("status"),
                       n_frames=None if n_frames is None else int(n_frames),
                       n_processed=len(trace), latest_frame=latest, latest_omega=omega,
                       raw_frame=raw, segmentation=segmentation, trace=trace,
                       **_read_grainmap(client, uid))


def _probe(client, uid: str) -> tuple:
    """:attr:`RunSnapshot.signature` of the run now, from a few small requests (no frame):
    :func:`watch` reads the whole snapshot only when it changed."""
    node = _processed_node(client, uid)
    n = node["frames"].read(columns=["frame"])["frame"].nunique() if "frames" in node else 0
    grainmap = _grainmap_fields(_grainmap_metadata(client, uid))
    return (node.metadata.get("status"), int(n), grainmap.get("grainmap_status"),
            grainmap.get("live_update"))


# ------------------------------------------------------------------------------ figure
def _stretch(frame: np.ndarray) -> np.ndarray:
    """Log of the frame from its median (the background: dark) to its 99.5th percentile
    (spots: bright); a beam stop's zeros would otherwise take the low end of the scale."""
    logged = np.log1p(np.clip(frame.astype(np.float64) - np.nanmin(frame), 0, None))
    lo, hi = np.nanpercentile(logged, [50.0, 99.5])
    return np.clip((logged - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(logged)


def _message(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_frame(ax, snapshot: RunSnapshot) -> None:
    if snapshot.raw_frame is None:
        _message(ax, "raw frame not readable" if snapshot.latest_frame is not None
                 else "no frame yet")
    else:
        ax.imshow(_stretch(snapshot.raw_frame), cmap="gray", interpolation="nearest")
    ax.set_title(f"frame {snapshot.latest_frame}" if snapshot.latest_frame is not None
                 else "latest frame")


def _draw_segmentation(ax, snapshot: RunSnapshot) -> None:
    seg = snapshot.segmentation
    if seg is None:
        _message(ax, "no segmentation yet")
        ax.set_title("segmentation")
        return
    if snapshot.raw_frame is not None and snapshot.raw_frame.shape == seg.shape:
        ax.imshow(_stretch(snapshot.raw_frame), cmap="gray", interpolation="nearest")
    else:
        ax.imshow(np.zeros(seg.shape), cmap="gray", vmin=0, vmax=1)
    overlay = np.zeros((*seg.shape, 4))
    overlay[seg > 0] = (1.0, 0.1, 0.1, 0.55)  # red where the mask says spot
    ax.imshow(overlay, interpolation="nearest")
    ax.set_title(f"segmentation: {int(seg.sum())} spot px")


def _draw_trace(ax, snapshot: RunSnapshot) -> None:
    trace = snapshot.trace
    if not len(trace):
        _message(ax, "no processed frame yet")
        ax.set_title("SNR")
        return
    omega = trace["omega"].to_numpy(float)
    ax.fill_between(omega, trace["snr_p5"].to_numpy(float), trace["snr_p95"].to_numpy(float),
                    color="C0", alpha=0.25, label="SNR 5-95 %")
    ax.plot(omega, trace["snr_p50"].to_numpy(float), "o-", color="C0", ms=3,
            label="SNR median")
    ax.set_xlabel("omega (deg)")
    ax.set_ylabel("spot SNR")
    spots = ax.twinx()  # spot counts have their own scale
    spots.plot(omega, trace["n_spots"].to_numpy(float), "s--", color="C1", ms=3,
               label="spots")
    spots.set_ylabel("spots per frame", color="C1")
    ax.set_title("SNR and spot count")
    handles = ax.get_legend_handles_labels()[0] + spots.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize="small", loc="upper left")


def _grain_colours(n: int):
    """A colour per grain id (0 = black): neighbouring ids get unrelated colours."""
    from matplotlib.colors import ListedColormap

    rng = np.random.default_rng(0)
    colours = np.concatenate([[[0.0, 0.0, 0.0]], rng.uniform(0.15, 1.0, (max(n, 1), 3))])
    return ListedColormap(colours)


def _draw_grainmap(ax, snapshot: RunSnapshot) -> None:
    ids = snapshot.grain_ids
    if ids is None or ids.ndim != 3 or not ids.size:
        _message(ax, "no grain map yet" if snapshot.grainmap_status in (None, "running")
                 else "grain map not readable")
        ax.set_title("grain map")
        return
    z = ids.shape[0] // 2
    n = int(ids.max(initial=0))
    ax.imshow(ids[z], cmap=_grain_colours(n), vmin=0, vmax=max(n, 1),
              interpolation="nearest")
    grains = len(np.unique(ids[ids > 0]))
    ax.set_title(f"grain map z = {z}: {grains} grains")


def snapshot_figure(snapshot: RunSnapshot):
    """A 2x2 figure of ``snapshot``: frame, segmentation, SNR trace, grain-map slice.

    Built on :class:`matplotlib.figure.Figure` (no pyplot), so it renders headless and in
    threads; save it with ``fig.savefig(path)``. The SNR panel has a twin axis for the spot
    count, so ``fig.axes`` holds five axes in four panels.

    Parameters
    ----------
    snapshot : RunSnapshot

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 9), layout="constrained")
    axes = fig.subplots(2, 2)
    _draw_frame(axes[0, 0], snapshot)
    _draw_segmentation(axes[0, 1], snapshot)
    _draw_trace(axes[1, 0], snapshot)
    _draw_grainmap(axes[1, 1], snapshot)
    total = "?" if snapshot.n_frames is None else snapshot.n_frames
    title = f"run {snapshot.uid[:8]}: {snapshot.n_processed}/{total} frames processed"
    if snapshot.status:
        title += f" ({snapshot.status})"
    if snapshot.grainmap_status is not None:
        update = "-" if snapshot.live_update is None else snapshot.live_update
        title += (f"\ngrain map update {update}, {snapshot.grainmap_status}, decision "
                  f"{snapshot.decision or '-'}")
    fig.suptitle(title)
    return fig


def save_png(snapshot: RunSnapshot, path: str | Path) -> Path:
    """Write :func:`snapshot_figure` of ``snapshot`` to ``path``, beside and renamed
    (``os.replace``): a viewer reloading the PNG never sees half a file."""
    from labdct_live.io.output import atomic_file

    path = Path(path)
    fig = snapshot_figure(snapshot)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return path


# ------------------------------------------------------------------------------- watch
def watch(client, uid: str, *, interval: float = 2.0, png: str | Path | None = None,
          timeout: float | None = None, until_complete: bool = True,
          on_snapshot: Callable[[RunSnapshot], Any] | None = None) -> RunSnapshot:
    """Follow run ``uid`` until it is finished (or ``timeout``), by polling the catalog.

    tiled 0.2.20 has a client subscription, but it needs a streaming cache the embedded
    catalog server does not have (its websocket answers HTTP 500), so the viewer polls every
    ``interval`` s, reading the frame and the grain map only when the status, frame count or
    grain-map metadata changed; then ``on_snapshot(snapshot)`` is called and ``png``
    rewritten (atomically). A run whose processed results are not there yet (its raw run is)
    is waited for.

    The run is finished when the processed node's ``status`` is final (``"complete"``,
    ``"complete-with-errors"``, ``"incomplete"``, ``"aborted"``, ``"failed"``: anything but
    ``"running"``/``"started"``/missing) and its grain map is ``"complete"`` or absent; a
    grain map begun only after processing ended (end-of-scan) is not waited for.

    Parameters
    ----------
    client : tiled client root
    uid : str
        The raw run's uid.
    interval : float
        Seconds between polls.
    png : path-like, optional
        Where to keep the latest :func:`snapshot_figure`.
    timeout : float, optional
        Give up after this many seconds (None: wait as long as it takes).
    until_complete : bool
        Return once the run is finished; False: follow until ``timeout``.
    on_snapshot : callable, optional
        Called with each new :class:`RunSnapshot`.

    Returns
    -------
    RunSnapshot
        The last snapshot read.

    Raises
    ------
    ValueError, LookupError
        As :func:`read_snapshot`: an unsafe uid, or a run not in the catalog (nor its
        processed results, within ``timeout``).
    """
    uid = check_key(uid, "run uid")
    deadline = None if timeout is None else time.monotonic() + timeout
    last: RunSnapshot | None = None
    while True:
        snapshot = _poll(client, uid, last)
        if snapshot is not None and (last is None or snapshot.signature != last.signature):
            if png is not None:
                save_png(snapshot, png)
            if on_snapshot is not None:
                on_snapshot(snapshot)
        last = snapshot or last
        if until_complete and last is not None and last.finished:
            return last
        if deadline is not None and time.monotonic() >= deadline:
            if last is None:
                raise LookupError(f"run {uid!r} started but has no processed results after "
                                  f"{timeout:g} s")
            return last
        wait = interval if deadline is None else min(interval, deadline - time.monotonic())
        time.sleep(max(wait, 0.0))


def _poll(client, uid: str, last: RunSnapshot | None) -> RunSnapshot | None:
    """The snapshot now (``last`` if nothing changed or the catalog is briefly away); None
    while the raw run is there but its first result is not."""
    from labdct_live.catalog.errors import is_transient_error

    try:
        if last is not None and _probe(client, uid) == last.signature:
            return last  # nothing new: spare the frame and the grain map
        return read_snapshot(client, uid)
    except LookupError:
        # A run just started: processed/<uid> is made with its first result.
        if last is None and uid != "processed" and uid in client:
            return None
        raise
    except Exception as exc:
        if last is None or not is_transient_error(exc):
            raise
        logger.warning("run %s: catalog unreachable (%s); polling on", uid, exc)
        return last
