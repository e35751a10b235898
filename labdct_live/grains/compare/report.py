"""The comparison report: Table 2, ratio and deviation plots, and a markdown summary."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from labdct_live.grains.compare.boundaries import deviation_map
from labdct_live.grains.compare.comparison import delta_gb_ratio
from labdct_live.grains.compare.pairing import CLASS_FALSE_NEGATIVE, CLASS_FALSE_POSITIVE
from labdct_live.grains.phase import GrainMapError

if TYPE_CHECKING:
    from labdct_live.grains.compare.comparison import Comparison

__all__ = [
    "table2",
    "write_report",
]

logger = logging.getLogger(__name__)


def table2(comparisons: Sequence[Comparison]) -> pd.DataFrame:
    """The paper's Table 2: one row per reconstruction (sizes in µm)."""
    rows = []
    for comp in comparisons:
        c = comp.counts()
        ref = comp.reference_grains
        esd_um = ref["esd_mm"] * 1e3
        fn = ref["class"] == CLASS_FALSE_NEGATIVE
        paired = ref["n_partners"] > 0
        dgb_um = ref.loc[paired, "delta_gb_mm"] * 1e3
        rows.append({
            "Reconstruction": comp.label,
            "Reference grains": c["reference"],
            "Reference ESD (µm)": f"{esd_um.mean():.1f} ± {esd_um.std(ddof=0):.1f}",
            "Indexed grains": c["indexed"],
            "One-to-one": c["one_to_one"],
            "One-to-multi (partners)": f"{c['one_to_multi']} ({c['one_to_multi_partners']})",
            "False negatives": c["false_negative"],
            "False-negative ESD (µm)": (f"{esd_um[fn].mean():.1f} ± {esd_um[fn].std(ddof=0):.1f}"
                                        if fn.any() else "–"),
            "False positives": c["false_positive"],
            "δ_GB (µm)": (f"{dgb_um.mean():.2f} ± {dgb_um.std(ddof=0):.2f}"
                          if dgb_um.notna().any() else "–"),
        })
    return pd.DataFrame(rows)


def _markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _plot_sizes(comparisons: Sequence[Comparison], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = comparisons[0].reference_grains
    bins = np.linspace(0, ref["esd_mm"].max() * 1e3 * 1.05, 25)
    fig, axes = plt.subplots(1, len(comparisons), figsize=(5.5 * len(comparisons), 4),
                             squeeze=False)
    for ax, comp in zip(axes[0], comparisons):
        r = comp.reference_grains
        ax.hist(r["esd_mm"] * 1e3, bins, histtype="step", lw=2, label="reference", color="k")
        ax.hist(comp.reconstructed_grains["esd_mm"] * 1e3, bins, histtype="step", lw=1.5,
                label=f"{comp.label} (indexed)")
        ax.hist(r.loc[r["class"] == CLASS_FALSE_NEGATIVE, "esd_mm"] * 1e3, bins, alpha=0.5,
                label="false negatives")
        fp = comp.reconstructed_grains
        ax.hist(fp.loc[fp["class"] == CLASS_FALSE_POSITIVE, "esd_mm"] * 1e3, bins, alpha=0.5,
                label="false positives")
        ax.set_xlabel("equivalent spherical diameter (µm)")
        ax.set_ylabel("grains")
        ax.set_title(comp.label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_scatter(x, ys: Mapping[str, np.ndarray], xlabel: str, ylabel: str, path: Path,
                  hline: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, y in ys.items():
        ax.scatter(x[label] if isinstance(x, Mapping) else x, y, s=10, alpha=0.7, label=label)
    if hline is not None:
        ax.axhline(hline, color="k", lw=1, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(ys) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_deviation(dev: pd.DataFrame, grain_id: int, label: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot(projection="3d")
    pts = ax.scatter(dev["x_mm"] * 1e3, dev["y_mm"] * 1e3, dev["z_mm"] * 1e3,
                     c=dev["distance_mm"] * 1e3, s=4, cmap="viridis")
    fig.colorbar(pts, ax=ax, shrink=0.7, label="distance to partner boundary (µm)")
    ranges = [np.ptp(dev[c]) + 1e-9 for c in ("x_mm", "y_mm", "z_mm")]
    ax.set_box_aspect(ranges)  # true proportions of the grain
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    ax.set_zlabel("z (µm)")
    ax.set_title(f"{label}: grain {grain_id}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _default_deviation_grains(comparisons: Sequence[Comparison], n: int = 3) -> list[int]:
    """The n largest reference grains paired in every comparison."""
    ref = comparisons[0].reference_grains
    paired = np.logical_and.reduce([c.reference_grains["n_partners"] > 0 for c in comparisons])
    return ref[paired].sort_values("esd_mm", ascending=False).index[:n].tolist()


def write_report(
    comparisons: Sequence[Comparison],
    out_dir: str | os.PathLike,
    *,
    deviation_grains: Sequence[int] | None = None,
    sources: Mapping[str, str] | None = None,
) -> Path:
    """Write the comparison report: markdown, CSV tables and PNG plots.

    ``report.md`` is written last (under a temporary name, then renamed): its presence means
    the report is complete.

    Parameters
    ----------
    comparisons : sequence of 1 or 2 Comparison
        Against the same reference; with two, the δ_GB ratio first/second is reported.
    out_dir : path-like
        Output directory (created).
    deviation_grains : sequence of int, optional
        Reference grains for deviation maps (default: the 3 largest paired in all).
    sources : dict, optional
        {"reference": path, label: path, ...} listed in the report.

    Returns
    -------
    Path
        ``out_dir / "report.md"``.
    """
    if not 1 <= len(comparisons) <= 2:
        raise GrainMapError(f"write_report takes 1 or 2 comparisons, got {len(comparisons)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / "report.md"
    final.unlink(missing_ok=True)  # an old report must not vouch for new files
    lines = ["# Grain-map comparison", ""]
    if sources:
        lines += ["Files:", ""] + [f"- {k}: `{v}`" for k, v in sources.items()] + [""]
    first = comparisons[0]
    lines += [
        f"Pairing: cubic misorientation < {first.threshold_deg:g}°"
        + (f", centroid distance ≤ {first.max_distance_mm * 1e3:g} µm"
           if first.max_distance_mm else "")
        + ". Sizes are equivalent spherical diameters (ESD); δ_GB is the mean distance from "
          "the reference grain's boundary voxels to the nearest boundary voxel of its partner "
          "(Eq. 4).", "",
        "## Grain counts (Table 2)", "", _markdown_table(table2(comparisons)), "",
        "## Registration", "",
        "| Reconstruction | translation z, y, x (µm) | rotation (°) | first-pass pairs |",
        "|---|---|---|---|",
    ]
    for comp in comparisons:
        reg = comp.registration
        t = ", ".join(f"{v * 1e3:.2f}" for v in reg.translation_mm)
        lines.append(f"| {comp.label} | {t} | {reg.rotation_angle_deg:.3f} | {reg.n_pairs} |")
    lines += ["", "## Plots", "", "![size distributions](size_distributions.png)", ""]
    for k, comp in enumerate(comparisons):
        stem = f"reconstruction{k + 1}"
        comp.reference_grains.assign(
            partners=comp.reference_grains["partners"].map(lambda p: " ".join(map(str, p)))
        ).to_csv(out / f"{stem}_reference_grains.csv")
        comp.reconstructed_grains.to_csv(out / f"{stem}_reconstructed_grains.csv")
    _plot_sizes(comparisons, out / "size_distributions.png")
    paired = {c.label: c.reference_grains[c.reference_grains["n_partners"] > 0]
              for c in comparisons}
    _plot_scatter({k: v["esd_mm"] * 1e3 for k, v in paired.items()},
                  {k: v["delta_gb_mm"] * 1e3 for k, v in paired.items()},
                  "reference grain ESD (µm)", "δ_GB (µm)", out / "delta_gb_vs_size.png")
    lines += ["![δ_GB vs size](delta_gb_vs_size.png)", ""]
    if len(comparisons) == 2:
        ratio, stats = delta_gb_ratio(*comparisons)
        ratio.to_csv(out / "delta_gb_ratio.csv")
        _plot_scatter(ratio["esd_mm"].to_numpy() * 1e3, {"ratio": ratio["ratio"].to_numpy()},
                      "reference grain ESD (µm)",
                      f"δ_GB({comparisons[0].label}) / δ_GB({comparisons[1].label})",
                      out / "ratio_vs_size.png", hline=1.0)
        lines += [
            "## δ_GB ratio (Fig. 7)", "",
            f"δ_GB({comparisons[0].label}) / δ_GB({comparisons[1].label}) over "
            f"{stats['n_common']} commonly indexed grains: mean {stats['mean']:.3f}, "
            f"SD {stats['sd']:.3f}, max {stats['max']:.3f}, "
            f"> 1 for {stats['fraction_above_1']:.0%} of the grains"
            + (f" ({stats['n_infinite']} infinite ratios left out)"
               if stats["n_infinite"] else "") + ".", "",
            "![ratio vs size](ratio_vs_size.png)", "",
        ]
    grains = (list(deviation_grains) if deviation_grains is not None
              else _default_deviation_grains(comparisons))
    if grains:
        lines += ["## Deviation maps (Fig. 8)", ""]
    for grain_id in grains:
        for k, comp in enumerate(comparisons):
            try:
                dev = deviation_map(comp, int(grain_id))
            except GrainMapError as exc:
                lines += [f"- grain {grain_id}, {comp.label}: {exc}"]
                continue
            name = f"deviation_grain{grain_id}_reconstruction{k + 1}.png"
            _plot_deviation(dev, int(grain_id), comp.label, out / name)
            lines += [f"![grain {grain_id}, {comp.label}]({name})"]
        lines.append("")
    tmp = out / ".report.md.partial"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.move(tmp, final)
    logger.info("wrote %s", final)
    return final
