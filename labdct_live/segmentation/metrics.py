"""Judging a segmentation against ground truth: spot matching, detection and pixel scores.

**Matching.** A ground-truth spot and a predicted spot *overlap* when they share at least one
pixel (and their IoU exceeds ``min_iou``). Spots are paired one-to-one so that the number of
pairs is as large as possible and, among such pairings, the summed IoU is largest (an
assignment problem solved per connected group of overlapping spots). Then every spot has
an outcome:

- truth: ``matched``; ``merged`` (unpaired, but it overlaps a prediction paired with another
  truth spot: its signal was merged into a neighbour); ``missed`` (overlaps no prediction);
- prediction: ``matched``; ``split`` (unpaired, but it overlaps a truth spot paired with
  another prediction: a fragment); ``false`` (overlaps no truth spot).

True positives are the pairs; false negatives are missed + merged truth spots; false positives
are split + false predictions. Also counted: *merging predictions* (covering >= 2 truth
spots) and *split truths* (covered by >= 2 predictions).

**Scores.** precision = TP / predictions, recall = TP / truths, F1 = 2 TP / (predictions +
truths); NaN when undefined. By SNR bin, truth spots are binned by their own SNR; a paired
prediction by its partner's SNR, a split fragment by the SNR of the truth spot it overlaps
most, a false spot by its own SNR (measured like a truth spot's).
Pixel IoU and Dice compare the binary masks. The boundary error of a pair is the mean, over
the boundary pixels of both spots, of the distance to the other spot's nearest boundary pixel
(a boundary pixel has a 4-neighbour outside the spot).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from labdct_live.segmentation.snr import spot_snr
from labdct_live.segmentation.threshold import FOUR_CONNECTIVITY

__all__ = [
    "DEFAULT_SNR_BINS",
    "SpotMatch",
    "match_spots",
    "boundary_error",
    "detection_scores",
    "scores_by_snr",
    "pixel_counts",
    "pixel_scores",
    "Evaluation",
    "evaluate_frames",
]

#: Default SNR bin edges; the first bin also takes SNRs below 0.
DEFAULT_SNR_BINS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, np.inf)


# ---------------------------------------------------------------------------- matching
@dataclass
class SpotMatch:
    """Result of :func:`match_spots` for one frame.

    Attributes
    ----------
    truth : pandas.DataFrame
        One row per truth spot: ``label``, ``area``, ``pred`` (paired prediction, 0 if
        none), ``iou``, ``best_pred`` (prediction overlapping most, 0 if none),
        ``n_overlaps``, ``outcome`` (matched / merged / missed), ``boundary_error``
        (NaN if unpaired).
    pred : pandas.DataFrame
        One row per predicted spot: ``label``, ``area``, ``truth``, ``iou``, ``best_truth``,
        ``n_overlaps``, ``outcome`` (matched / split / false), ``boundary_error``.
    """

    truth: pd.DataFrame
    pred: pd.DataFrame

    def counts(self) -> dict:
        """Detection counts and scores (see :func:`detection_scores`)."""
        return detection_scores(self.truth, self.pred)


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{name} must be a 2-D label image, got shape {labels.shape}")
    if labels.dtype.kind not in "iub":
        raise ValueError(f"{name} must be an integer label image, got {labels.dtype}")
    return labels.astype(np.int64, copy=False)


def _areas(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, area = np.unique(labels[labels > 0], return_counts=True)
    return ids, area


def _assign(t_idx: np.ndarray, p_idx: np.ndarray, iou: np.ndarray,
            n_t: int, n_p: int) -> tuple[np.ndarray, np.ndarray]:
    """Max-cardinality, then max-IoU one-to-one pairing; returns pair indices into edges."""
    if iou.size == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    graph = coo_matrix((np.ones_like(iou), (t_idx, n_t + p_idx)), shape=(n_t + n_p,) * 2)
    _, component = connected_components(graph, directed=False)
    edge_comp = component[t_idx]
    order = np.argsort(edge_comp, kind="stable")
    bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
    chosen = []
    for group in np.split(order, bounds):
        if group.size == 1:
            chosen.append(group)
            continue
        ts, t_local = np.unique(t_idx[group], return_inverse=True)
        ps, p_local = np.unique(p_idx[group], return_inverse=True)
        # Weight 1 + (small IoU bonus): more pairs always beats more summed IoU.
        weight = np.zeros((ts.size, ps.size))
        weight[t_local, p_local] = (len(group) + 1) + iou[group]
        rows, cols = linear_sum_assignment(weight, maximize=True)
        edge_of = np.full((ts.size, ps.size), -1)
        edge_of[t_local, p_local] = group
        picked = edge_of[rows, cols]
        chosen.append(picked[picked >= 0])
    pairs = np.concatenate(chosen)
    return t_idx[pairs], p_idx[pairs]


def match_spots(truth_labels: np.ndarray, pred_labels: np.ndarray, min_iou: float = 0.0,
                with_boundary_error: bool = True) -> SpotMatch:
    """Pair predicted spots with ground-truth spots one-to-one by overlap.

    Parameters
    ----------
    truth_labels, pred_labels : (rows, cols) int arrays
        Label images, 0 = background (label a binary mask first, e.g. with
        :func:`labdct_live.segmentation.spots.label_spots`).
    min_iou : float
        Overlapping spots with IoU <= ``min_iou`` are treated as not overlapping
        (0: any shared pixel counts).
    with_boundary_error : bool
        Compute the boundary error of each pair (a few ms per 100 pairs).

    Returns
    -------
    SpotMatch
        Per-spot tables with outcomes; see the module docstring for the definitions.

    Examples
    --------
    >>> truth = np.zeros((8, 8), int); truth[1:3, 1:3] = 1; truth[5:7, 5:7] = 2
    >>> pred = np.zeros((8, 8), int); pred[1:3, 1:3] = 1
    >>> match_spots(truth, pred).counts()["tp"], match_spots(truth, pred).counts()["fn"]
    (1, 1)
    """
    truth = _check_labels(truth_labels, "truth_labels")
    pred = _check_labels(pred_labels, "pred_labels")
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
    if not 0 <= min_iou < 1:
        raise ValueError(f"min_iou must be in [0, 1), got {min_iou!r}")
    t_ids, t_area = _areas(truth)
    p_ids, p_area = _areas(pred)

    both = (truth > 0) & (pred > 0)
    stride = int(pred.max(initial=0)) + 1
    keys, overlap = np.unique(truth[both] * stride + pred[both], return_counts=True)
    t_idx = np.searchsorted(t_ids, keys // stride)
    p_idx = np.searchsorted(p_ids, keys % stride)
    iou = overlap / (t_area[t_idx] + p_area[p_idx] - overlap)
    keep = iou > min_iou
    t_idx, p_idx, iou, overlap = t_idx[keep], p_idx[keep], iou[keep], overlap[keep]

    pair_t, pair_p = _assign(t_idx, p_idx, iou, t_ids.size, p_ids.size)
    t_partner = np.full(t_ids.size, -1)
    p_partner = np.full(p_ids.size, -1)
    t_partner[pair_t] = pair_p
    p_partner[pair_p] = pair_t
    pair_iou = dict(zip(zip(t_idx.tolist(), p_idx.tolist()), iou.tolist()))

    def best_other(own: np.ndarray, other: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        best = np.full(n, -1)
        n_over = np.bincount(own, minlength=n)
        order = np.lexsort((-overlap, own))  # per spot, largest overlap first
        first = np.ones(order.size, dtype=bool)
        first[1:] = own[order][1:] != own[order][:-1]
        best[own[order][first]] = other[order][first]
        return best, n_over

    t_best, t_nover = best_other(t_idx, p_idx, t_ids.size)
    p_best, p_nover = best_other(p_idx, t_idx, p_ids.size)

    t_out = np.where(t_partner >= 0, "matched", np.where(t_nover > 0, "merged", "missed"))
    p_out = np.where(p_partner >= 0, "matched", np.where(p_nover > 0, "split", "false"))

    t_bnd = np.full(t_ids.size, np.nan)
    if with_boundary_error and pair_t.size:
        t_boxes = ndi.find_objects(truth)
        p_boxes = ndi.find_objects(pred)
        for ti, pi in zip(pair_t, pair_p):
            t_bnd[ti] = _pair_boundary_error(truth, pred, int(t_ids[ti]), int(p_ids[pi]),
                                             t_boxes[t_ids[ti] - 1], p_boxes[p_ids[pi] - 1])
    p_bnd = np.full(p_ids.size, np.nan)
    p_bnd[pair_p] = t_bnd[pair_t]

    def label_of(ids: np.ndarray, index: np.ndarray) -> np.ndarray:
        return np.where(index >= 0, ids[np.maximum(index, 0)] if ids.size else 0, 0)

    truth_table = pd.DataFrame({
        "label": t_ids, "area": t_area, "pred": label_of(p_ids, t_partner),
        "iou": [pair_iou.get((i, j), 0.0) for i, j in enumerate(t_partner)],
        "best_pred": label_of(p_ids, t_best), "n_overlaps": t_nover,
        "outcome": t_out.astype(object), "boundary_error": t_bnd,
    })
    pred_table = pd.DataFrame({
        "label": p_ids, "area": p_area, "truth": label_of(t_ids, p_partner),
        "iou": [pair_iou.get((j, i), 0.0) for i, j in enumerate(p_partner)],
        "best_truth": label_of(t_ids, p_best), "n_overlaps": p_nover,
        "outcome": p_out.astype(object), "boundary_error": p_bnd,
    })
    return SpotMatch(truth_table, pred_table)


# ---------------------------------------------------------------------- boundary error
def _inner_boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndi.binary_erosion(mask, FOUR_CONNECTIVITY, border_value=0)


def boundary_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean symmetric distance between the boundaries of two binary regions (pixels).

    The mean over the boundary pixels of ``a`` and of ``b`` of the Euclidean distance to the
    nearest boundary pixel of the other region; 0 for identical regions, NaN if either is
    empty.

    Examples
    --------
    >>> a = np.zeros((9, 9), bool); a[2:7, 2:7] = True
    >>> boundary_error(a, a)
    0.0
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"regions differ in shape: {a.shape} and {b.shape}")
    if not a.any() or not b.any():
        return float("nan")
    # Pad so that regions touching the crop edge keep a closed boundary.
    a = np.pad(a, 1)
    b = np.pad(b, 1)
    ba, bb = _inner_boundary(a), _inner_boundary(b)
    to_b = ndi.distance_transform_edt(~bb)
    to_a = ndi.distance_transform_edt(~ba)
    return float((to_b[ba].sum() + to_a[bb].sum()) / (ba.sum() + bb.sum()))


def _pair_boundary_error(truth: np.ndarray, pred: np.ndarray, t: int, p: int,
                         t_box: tuple[slice, slice], p_box: tuple[slice, slice]) -> float:
    rows = slice(min(t_box[0].start, p_box[0].start), max(t_box[0].stop, p_box[0].stop))
    cols = slice(min(t_box[1].start, p_box[1].start), max(t_box[1].stop, p_box[1].stop))
    return boundary_error(truth[rows, cols] == t, pred[rows, cols] == p)


# --------------------------------------------------------------------------- scores
def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


def detection_scores(truth: pd.DataFrame, pred: pd.DataFrame) -> dict:
    """Counts and scores from :class:`SpotMatch` tables (one frame, or several concatenated).

    Returns
    -------
    dict
        ``n_truth``, ``n_pred``, ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``,
        ``missed``, ``merged`` (truth spots lost by merging), ``split`` (extra fragments),
        ``false``, ``merging_preds`` (predictions covering >= 2 truths), ``split_truths``
        (truths covered by >= 2 predictions), ``boundary_error`` (mean over pairs).
    """
    t_out = truth["outcome"].to_numpy()
    p_out = pred["outcome"].to_numpy()
    tp = int(np.count_nonzero(t_out == "matched"))
    n_truth, n_pred = len(truth), len(pred)
    bnd = truth["boundary_error"].to_numpy(dtype=float)
    bnd = bnd[np.isfinite(bnd)]
    return {
        "n_truth": n_truth, "n_pred": n_pred, "tp": tp,
        "fp": n_pred - tp, "fn": n_truth - tp,
        "precision": _ratio(tp, n_pred), "recall": _ratio(tp, n_truth),
        "f1": _ratio(2 * tp, n_pred + n_truth),
        "missed": int(np.count_nonzero(t_out == "missed")),
        "merged": int(np.count_nonzero(t_out == "merged")),
        "split": int(np.count_nonzero(p_out == "split")),
        "false": int(np.count_nonzero(p_out == "false")),
        "merging_preds": int(np.count_nonzero(pred["n_overlaps"].to_numpy() >= 2)),
        "split_truths": int(np.count_nonzero(truth["n_overlaps"].to_numpy() >= 2)),
        "boundary_error": float(bnd.mean()) if bnd.size else float("nan"),
    }


def _bin_labels(bins: Sequence[float]) -> list[str]:
    def fmt(v: float) -> str:
        return "inf" if np.isinf(v) else f"{v:g}"
    return [f"[{fmt(a)}, {fmt(b)})" for a, b in zip(bins[:-1], bins[1:])]


def scores_by_snr(truth: pd.DataFrame, pred: pd.DataFrame,
                  bins: Sequence[float] = DEFAULT_SNR_BINS) -> pd.DataFrame:
    """Precision, recall and F1 per SNR bin.

    Parameters
    ----------
    truth, pred : pandas.DataFrame
        :class:`SpotMatch` tables with an ``snr`` column (as made by :func:`evaluate_frames`).
    bins : sequence of float
        Increasing bin edges; SNRs below the first edge fall in the first bin; an infinite
        last edge includes SNR = inf (noise-free spots); SNRs at or above a finite last edge
        and NaN SNRs are left out.

    Returns
    -------
    pandas.DataFrame
        One row per bin: ``snr_bin``, ``snr_min``, ``snr_max``, ``n_truth``, ``n_pred``,
        ``tp``, ``precision``, ``recall``, ``f1``.
    """
    edges = np.asarray(bins, dtype=float)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bins must be at least two increasing edges, got {list(bins)}")

    def which(snr: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(edges, snr, side="right") - 1
        idx = np.where(snr < edges[0], 0, idx)
        if np.isinf(edges[-1]):  # the last bin is closed: noise-free spots have SNR inf
            idx = np.where(snr == np.inf, edges.size - 2, idx)
        return np.where(np.isnan(snr) | (idx >= edges.size - 1), -1, idx)

    t_bin = which(truth["snr"].to_numpy(dtype=float))
    p_bin = which(pred["snr"].to_numpy(dtype=float))
    t_hit = truth["outcome"].to_numpy() == "matched"
    p_hit = pred["outcome"].to_numpy() == "matched"
    rows = []
    for k, name in enumerate(_bin_labels(edges)):
        n_t = int(np.count_nonzero(t_bin == k))
        n_p = int(np.count_nonzero(p_bin == k))
        tp_t = int(np.count_nonzero(t_hit & (t_bin == k)))
        tp_p = int(np.count_nonzero(p_hit & (p_bin == k)))  # = tp_t when pairs share an SNR
        precision, recall = _ratio(tp_p, n_p), _ratio(tp_t, n_t)
        f1 = _ratio(2 * precision * recall, precision + recall) if n_t and n_p else float("nan")
        rows.append({"snr_bin": name, "snr_min": edges[k], "snr_max": edges[k + 1],
                     "n_truth": n_t, "n_pred": n_p, "tp": tp_t,
                     "precision": precision, "recall": recall, "f1": f1})
    return pd.DataFrame(rows)


def pixel_counts(truth_mask: np.ndarray, pred_mask: np.ndarray) -> dict:
    """Pixel true positives, false positives and false negatives of two binary masks."""
    t = np.asarray(truth_mask) > 0
    p = np.asarray(pred_mask) > 0
    if t.shape != p.shape:
        raise ValueError(f"masks differ in shape: {t.shape} and {p.shape}")
    tp = int(np.count_nonzero(t & p))
    return {"tp": tp, "fp": int(np.count_nonzero(p)) - tp, "fn": int(np.count_nonzero(t)) - tp}


def pixel_scores(truth_mask: np.ndarray | None = None, pred_mask: np.ndarray | None = None,
                 counts: dict | None = None) -> dict:
    """Pixel IoU and Dice of two binary masks (or of summed :func:`pixel_counts`).

    Returns
    -------
    dict
        ``iou`` = TP / (TP + FP + FN) and ``dice`` = 2 TP / (2 TP + FP + FN); NaN when both
        masks are empty.
    """
    if counts is None:
        counts = pixel_counts(truth_mask, pred_mask)
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    return {"iou": _ratio(tp, tp + fp + fn), "dice": _ratio(2 * tp, 2 * tp + fp + fn)}


# ----------------------------------------------------------------- whole evaluations
@dataclass
class Evaluation:
    """Result of :func:`evaluate_frames`.

    Attributes
    ----------
    truth, pred : pandas.DataFrame
        :class:`SpotMatch` tables of all frames with ``frame`` and ``snr`` columns.
    per_frame : pandas.DataFrame
        :func:`detection_scores` and pixel IoU/Dice of every frame.
    summary : dict
        :func:`detection_scores` and :func:`pixel_scores` over all frames.
    by_snr : pandas.DataFrame
        :func:`scores_by_snr` over all frames (empty if no frame had an input image).
    """

    truth: pd.DataFrame
    pred: pd.DataFrame
    per_frame: pd.DataFrame
    summary: dict
    by_snr: pd.DataFrame


def evaluate_frames(frames: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
                    bins: Sequence[float] = DEFAULT_SNR_BINS, min_iou: float = 0.0,
                    margin: int = 20, exclude: np.ndarray | None = None,
                    snr_column: str = "snr") -> Evaluation:
    """Match and score a sequence of frames.

    Parameters
    ----------
    frames : iterable of (truth_labels, pred_labels, image)
        Per frame: ground-truth and predicted label images and the input image the SNR is
        measured on (None: no SNR for this frame).
    bins : sequence of float
        SNR bin edges for :func:`scores_by_snr`.
    min_iou : float
        See :func:`match_spots`.
    margin : int
        Background margin for :func:`labdct_live.segmentation.snr.spot_snr`.
    exclude : ndarray of bool, optional
        Pixels not used as background (the beam stop).
    snr_column : str
        ``"snr"`` or ``"snr_combined"`` (the variant dividing by both SDs).

    Returns
    -------
    Evaluation
    """
    truths, preds, per_frame = [], [], []
    totals = {"tp": 0, "fp": 0, "fn": 0}
    have_snr = False
    for index, (truth_labels, pred_labels, image) in enumerate(frames):
        match = match_spots(truth_labels, pred_labels, min_iou)
        t, p = match.truth, match.pred
        if image is not None:
            have_snr = True
            t_snr = spot_snr(image, truth_labels, margin, exclude).set_index("label")
            p_snr = spot_snr(image, pred_labels, margin, exclude).set_index("label")
            t["snr"] = t["label"].map(t_snr[snr_column]).to_numpy(dtype=float)
            own = p["label"].map(p_snr[snr_column]).to_numpy(dtype=float)
            # paired: the partner's SNR (so a pair counts in one bin); split fragments: the
            # SNR of the truth spot they overlap most; false spots: their own
            via = np.where(p["truth"] > 0, p["truth"], p["best_truth"])
            via_snr = pd.Series(via).map(t.set_index("label")["snr"]).to_numpy(dtype=float)
            p["snr"] = np.where(via > 0, via_snr, own)
        else:
            t["snr"] = np.nan
            p["snr"] = np.nan
        t.insert(0, "frame", index)
        p.insert(0, "frame", index)
        truths.append(t)
        preds.append(p)
        pix = pixel_counts(np.asarray(truth_labels) > 0, np.asarray(pred_labels) > 0)
        for k in totals:
            totals[k] += pix[k]
        per_frame.append({"frame": index, **detection_scores(t, p),
                          **{f"pixel_{k}": v for k, v in pixel_scores(counts=pix).items()}})
    if not truths:
        raise ValueError("no frames to evaluate")
    truth = pd.concat(truths, ignore_index=True)
    pred = pd.concat(preds, ignore_index=True)
    summary = {**detection_scores(truth, pred),
               **{f"pixel_{k}": v for k, v in pixel_scores(counts=totals).items()}}
    by_snr = scores_by_snr(truth, pred, bins) if have_snr else pd.DataFrame()
    return Evaluation(truth, pred, pd.DataFrame(per_frame), summary, by_snr)
