"""Tuning the standard routine's four parameters against ground truth (F1 objective).

The rolling median (step 1) does not depend on the four parameters, so tuning works on
median-subtracted frames (:func:`labdct_live.segmentation.rolling_median.subtract_rolling_median`
of the whole
scan, then the frames chosen for tuning). Trials are grouped by ``(background, sigma)`` so
that each ``-LoG`` response is computed once and shared by every ``(percent, min_size)``.

The objective is the detection F1 pooled over all frames (true positives, false positives
and false negatives summed before the ratio), with spots matched one-to-one by overlap
(:func:`labdct_live.segmentation.metrics.match_spots`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from labdct_live.segmentation.metrics import detection_scores, match_spots
from labdct_live.segmentation.routine import RoutineParams, log_response, threshold_response

__all__ = ["DEFAULT_GRID", "TuneResult", "tune_routine", "score_params"]

log = logging.getLogger(__name__)

#: Values tried for each parameter (the public-code and older-variant values included).
DEFAULT_GRID: dict[str, tuple] = {
    "background": (0.0, 5.0, 10.0, 20.0, 40.0, 80.0),
    "sigma": (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0),
    "percent": (0.05, 0.1, 0.2, 0.3, 0.5),
    "min_size": (2, 4, 6, 10, 20),
}

_PARAMS = ("background", "sigma", "percent", "min_size")


@dataclass
class TuneResult:
    """Outcome of :func:`tune_routine`.

    Attributes
    ----------
    best : RoutineParams
        Parameters with the highest F1 (ties: the first tried).
    best_f1 : float
        Its pooled F1.
    trials : pandas.DataFrame
        One row per trial: the four parameters, then ``f1``, ``precision``, ``recall``,
        ``tp``, ``fp``, ``fn``, ``merged``, ``split``; sorted by F1, best first.
    """

    best: RoutineParams
    best_f1: float
    trials: pd.DataFrame


def _check_inputs(corrected: np.ndarray, truth_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    corrected = np.asarray(corrected)
    truth_labels = np.asarray(truth_labels)
    if corrected.ndim == 2:
        corrected, truth_labels = corrected[None], truth_labels[None]
    if corrected.ndim != 3 or corrected.shape != truth_labels.shape:
        raise ValueError(
            f"corrected frames {corrected.shape} and truth labels {truth_labels.shape} must "
            "both be (n, rows, cols) of the same shape")
    if len(corrected) == 0:
        raise ValueError("no frames to tune on")
    return corrected, truth_labels


def _scores_for(responses: list[np.ndarray], truth_labels: np.ndarray, percent: float,
                min_size: int, min_iou: float) -> dict:
    truths, preds = [], []
    for response, truth in zip(responses, truth_labels):
        _, labels = threshold_response(response, percent, min_size)
        match = match_spots(truth, labels, min_iou, with_boundary_error=False)
        truths.append(match.truth)
        preds.append(match.pred)
    scores = detection_scores(pd.concat(truths), pd.concat(preds))
    return {k: scores[k] for k in ("f1", "precision", "recall", "tp", "fp", "fn",
                                   "merged", "split")}


def score_params(corrected: np.ndarray, truth_labels: np.ndarray, params: RoutineParams,
                 exclude: np.ndarray | None = None, min_iou: float = 0.0) -> dict:
    """Pooled detection scores of one parameter set on median-subtracted frames."""
    corrected, truth_labels = _check_inputs(corrected, truth_labels)
    responses = [log_response(c, params.background, params.sigma, exclude) for c in corrected]
    return _scores_for(responses, truth_labels, params.percent, params.min_size, min_iou)


def tune_routine(corrected: np.ndarray, truth_labels: np.ndarray,
                 search: str = "random", n_trials: int = 60,
                 grid: Mapping[str, Sequence] = DEFAULT_GRID, window: int = 11,
                 exclude: np.ndarray | None = None, min_iou: float = 0.0,
                 seed: int | np.random.Generator | None = 0,
                 progress: bool = True) -> TuneResult:
    """Search background, sigma, percent and minimum size for the best F1.

    Parameters
    ----------
    corrected : (n, rows, cols) array
        Median-subtracted frames (the rolling median of the whole scan, frames to tune on).
    truth_labels : (n, rows, cols) int array
        Ground-truth spot labels of the same frames.
    search : {"random", "grid"}
        ``"grid"`` tries every combination of ``grid``; ``"random"`` tries ``n_trials``
        combinations drawn from it without replacement.
    n_trials : int
        Trials of the random search.
    grid : mapping
        Values to try for ``background``, ``sigma``, ``percent`` and ``min_size``.
    window : int
        Rolling-median window the frames were corrected with (recorded in the result).
    exclude : ndarray of bool, optional
        Beam-stop mask.
    min_iou : float
        Matching threshold, see :func:`labdct_live.segmentation.metrics.match_spots`.
    seed : int or Generator
        Randomness of the random search.
    progress : bool
        Show a progress bar.

    Returns
    -------
    TuneResult
    """
    corrected, truth_labels = _check_inputs(corrected, truth_labels)
    missing = [p for p in _PARAMS if p not in grid or len(grid[p]) == 0]
    if missing:
        raise ValueError(f"grid needs values for {missing}")
    combos = list(itertools.product(*(tuple(grid[p]) for p in _PARAMS)))
    for combo in combos:  # reject invalid values before any work
        RoutineParams(window, *combo)
    if search == "random":
        if n_trials < 1:
            raise ValueError(f"n_trials must be >= 1, got {n_trials}")
        rng = np.random.default_rng(seed)
        picked = rng.choice(len(combos), size=min(n_trials, len(combos)), replace=False)
        combos = [combos[i] for i in sorted(picked)]
    elif search != "grid":
        raise ValueError(f"search must be 'random' or 'grid', got {search!r}")

    by_filter: dict[tuple, list[tuple]] = {}
    for background, sigma, percent, min_size in combos:
        by_filter.setdefault((background, sigma), []).append((percent, min_size))

    rows = []
    bar = tqdm(total=len(combos), desc="tuning routine", unit="trial", disable=not progress)
    for (background, sigma), rest in by_filter.items():
        responses = [log_response(c, background, sigma, exclude) for c in corrected]
        for percent, min_size in rest:
            scores = _scores_for(responses, truth_labels, percent, int(min_size), min_iou)
            rows.append({"background": float(background), "sigma": float(sigma),
                         "percent": float(percent), "min_size": int(min_size), **scores})
            bar.update()
    bar.close()
    trials = pd.DataFrame(rows)
    trials["f1"] = trials["f1"].fillna(0.0)
    trials = trials.sort_values("f1", ascending=False, kind="stable").reset_index(drop=True)
    best = trials.iloc[0]
    params = RoutineParams(window, best["background"], best["sigma"], best["percent"],
                           int(best["min_size"]))
    log.info("best routine parameters %s: F1 %.3f", params, best["f1"])
    return TuneResult(params, float(best["f1"]), trials)
