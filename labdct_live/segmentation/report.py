"""Evaluation reports: markdown tables and PNG plots of an evaluation against ground truth
(:class:`~labdct_live.segmentation.metrics.Evaluation`).

:func:`write_report` writes, into one folder (atomically: it appears only when complete)::

    report.md            summary table, F1 by SNR bin, SNR distribution of the truth spots
    f1_by_snr.png        precision, recall and F1 per SNR bin
    snr_histogram.png    truth-spot SNRs, found vs lost
    <name>_per_frame.csv, <name>_truth_spots.csv, <name>_pred_spots.csv

Several evaluations (e.g. the routine with tuned and with the paper's parameters) can be
reported side by side by passing a mapping ``{name: evaluation}``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from labdct_live.io.output import AtomicOutputDir
from labdct_live.segmentation.metrics import Evaluation
from labdct_live.segmentation.snr import snr_summary

__all__ = ["markdown_table", "summary_table", "write_report"]

_SUMMARY_ROWS = (
    ("n_truth", "truth spots"), ("n_pred", "predicted spots"), ("tp", "true positives"),
    ("fp", "false positives"), ("fn", "false negatives"), ("precision", "precision"),
    ("recall", "recall"), ("f1", "F1"), ("missed", "truth missed"),
    ("merged", "truth lost by merging"), ("split", "extra split fragments"),
    ("false", "false spots"), ("merging_preds", "predictions covering >= 2 truths"),
    ("split_truths", "truths covered by >= 2 predictions"),
    ("pixel_iou", "pixel IoU"), ("pixel_dice", "pixel Dice"),
    ("boundary_error", "boundary error (px)"),
)


def _format(value, digits: int) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "–"
        if np.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(table: pd.DataFrame, digits: int = 3) -> str:
    """A DataFrame as a GitHub-flavoured markdown table (floats to ``digits`` decimals)."""
    header = "| " + " | ".join(str(c) for c in table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(_format(v, digits) for v in row) + " |"
            for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _as_mapping(evaluations: Evaluation | Mapping[str, Evaluation]) -> dict[str, Evaluation]:
    if isinstance(evaluations, Evaluation):
        return {"prediction": evaluations}
    if not evaluations:
        raise ValueError("no evaluation to report")
    return dict(evaluations)


def summary_table(evaluations: Evaluation | Mapping[str, Evaluation]) -> pd.DataFrame:
    """Overall scores, one column per evaluation."""
    evals = _as_mapping(evaluations)
    data = {"metric": [label for _, label in _SUMMARY_ROWS]}
    for name, ev in evals.items():
        data[name] = pd.Series([ev.summary.get(key, float("nan")) for key, _ in _SUMMARY_ROWS],
                               dtype=object)  # keep counts as integers
    return pd.DataFrame(data)


def _by_snr_table(evals: dict[str, Evaluation]) -> pd.DataFrame:
    tables = []
    for name, ev in evals.items():
        if ev.by_snr.empty:
            continue
        t = ev.by_snr[["snr_bin", "n_truth", "n_pred", "tp", "precision", "recall", "f1"]]
        tables.append(t.assign(method=name)[["method", *t.columns]] if len(evals) > 1 else t)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def _plot_by_snr(evals: dict[str, Evaluation], path: Path) -> bool:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    usable = {n: e for n, e in evals.items() if not e.by_snr.empty}
    if not usable:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    for ax, metric in zip(axes, ("precision", "recall", "f1")):
        for name, ev in usable.items():
            x = np.arange(len(ev.by_snr))
            ax.plot(x, ev.by_snr[metric], marker="o", label=name)
            ax.set_xticks(x, ev.by_snr["snr_bin"], rotation=30)
        ax.set_title(metric if metric != "f1" else "F1")
        ax.set_xlabel("SNR bin")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score")
    if len(usable) > 1:
        axes[-1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_snr_histogram(evals: dict[str, Evaluation], path: Path) -> bool:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    usable = {n: e for n, e in evals.items() if np.isfinite(e.truth["snr"]).any()}
    if not usable:
        return False
    fig, axes = plt.subplots(1, len(usable), figsize=(5 * len(usable), 3.6), squeeze=False)
    for ax, (name, ev) in zip(axes[0], usable.items()):
        snr = ev.truth["snr"].to_numpy(dtype=float)
        found = ev.truth["outcome"].to_numpy() == "matched"
        finite = np.isfinite(snr)
        edges = np.linspace(min(0.0, np.nanmin(snr[finite])), np.nanmax(snr[finite]) + 1e-9, 41)
        ax.hist([snr[finite & found], snr[finite & ~found]], bins=edges, stacked=True,
                label=["found", "lost"], color=["tab:green", "tab:red"])
        ax.set_xlabel("truth spot SNR")
        ax.set_ylabel("spots")
        ax.set_title(name)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(out_dir: str | os.PathLike,
                 evaluations: Evaluation | Mapping[str, Evaluation],
                 title: str = "Segmentation evaluation",
                 context: Mapping[str, object] | None = None,
                 overwrite: bool = True) -> Path:
    """Write the markdown report, plots and CSV tables of one or more evaluations.

    Parameters
    ----------
    out_dir : path-like
        Report folder; replaced as a whole when complete (if ``overwrite``).
    evaluations : Evaluation or mapping of name to Evaluation
        What to report; several are shown side by side.
    title : str
        Heading of ``report.md``.
    context : mapping, optional
        Lines listed under the heading (e.g. ``{"truth": ..., "command": ...}``).
    overwrite : bool
        Replace an existing non-empty ``out_dir``.

    Returns
    -------
    Path
        ``out_dir / "report.md"``.
    """
    evals = _as_mapping(evaluations)
    out_dir = Path(out_dir)
    with AtomicOutputDir(out_dir, overwrite=overwrite) as tmp:
        lines = [f"# {title}", ""]
        for key, value in (context or {}).items():
            lines.append(f"- {key}: `{value}`" if key == "command" else f"- {key}: {value}")
        lines += ["", "## Overall", "", markdown_table(summary_table(evals)), ""]
        by_snr = _by_snr_table(evals)
        if not by_snr.empty:
            lines += ["## By SNR bin (truth spots binned by their SNR on the input frame)", "",
                      markdown_table(by_snr), ""]
            if _plot_by_snr(evals, tmp / "f1_by_snr.png"):
                lines += ["![precision, recall and F1 by SNR bin](f1_by_snr.png)", ""]
            first = next(iter(evals.values()))
            summary = snr_summary(first.truth["snr"].to_numpy(dtype=float))
            lines += ["## SNR of the truth spots", "",
                      markdown_table(pd.DataFrame([summary])), ""]
            if _plot_snr_histogram(evals, tmp / "snr_histogram.png"):
                lines += ["![SNR of truth spots, found and lost](snr_histogram.png)", ""]
        else:
            lines += ["(no input frames given: SNR bins not computed)", ""]
        for name, ev in evals.items():
            ev.per_frame.to_csv(tmp / f"{name}_per_frame.csv", index=False)
            ev.truth.to_csv(tmp / f"{name}_truth_spots.csv", index=False)
            ev.pred.to_csv(tmp / f"{name}_pred_spots.csv", index=False)
        lines += ["Per-frame scores and per-spot outcomes: "
                  + ", ".join(f"`{n}_per_frame.csv`" for n in evals) + ".", ""]
        (tmp / "report.md").write_text("\n".join(lines))
    return out_dir / "report.md"
