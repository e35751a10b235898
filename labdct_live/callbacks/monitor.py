"""Exposure monitor: per-frame spot SNR and count against omega, with exposure advice.

:class:`ExposureMonitor` is a :class:`event_model.DocumentRouter` (subscribe it to the
RunEngine for the start/stop documents) and a frame listener of the live processor
(``LiveConfig(listeners=[monitor.on_frame])``), which feeds it each processed frame's row.

Under Poisson statistics SNR grows as the square root of exposure, so the exposure that brings
the median spot to ``target_snr`` is ``t (target / snr)²``
(:func:`labdct_live.segmentation.snr.exposure_for_snr`).
The advice is logged as the scan goes (and passed to ``report``); the plot is a matplotlib
figure updated every frame, saved as PNG every ``save_every`` frames and at the stop document.

It also scores the segmentation without ground truth as the scan goes: as soon as both frames
of a Friedel pair (ω and ω + 180°) are processed, the spots of each are mirrored into the
other (:func:`labdct_live.segmentation.friedel.friedel_match`, with the run's geometry) and the
pair's Friedel-consistent spots and share are recorded in :attr:`ExposureMonitor.pairs` and
plotted. On a good segmentation most spots have their mate; noise and static background do
not (docs/real-frames.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from event_model import DocumentRouter

from labdct_live.io.names import safe_key
from labdct_live.segmentation.friedel import (
    DEFAULT_CONTROL_SHIFT,
    DEFAULT_TOLERANCE,
    FrameSpots,
    frame_spots,
    friedel_match,
    friedel_mirror,
)
from labdct_live.segmentation.snr import exposure_for_snr

__all__ = ["ExposureMonitor"]

logger = logging.getLogger(__name__)


class ExposureMonitor(DocumentRouter):
    """Watch spot quality and advise the exposure time.

    Parameters
    ----------
    target_snr : float
        SNR the median spot of a frame should reach.
    plot_path : path-like or None
        Where the PNG goes (``{uid}`` is replaced by the run's uid); no plot when None.
    report : callable
        ``report(message)`` for the advice; ``logger.info`` by default.
    advise_every : int
        Report every n-th frame (and whenever the advice changes by more than 20 %).
    save_every : int
        Save the PNG every n-th frame.
    friedel_tolerance : float or None
        Tolerance (pixels) of the live Friedel-pair score; None turns the score off.
    """

    def __init__(self, target_snr: float = 4.0, plot_path: str | Path | None = None,
                 report: Callable[[str], None] | None = None, advise_every: int = 10,
                 save_every: int = 20, friedel_tolerance: float | None = DEFAULT_TOLERANCE):
        super().__init__()
        if not target_snr > 0:
            raise ValueError(f"target_snr must be positive, got {target_snr}")
        self.target_snr = float(target_snr)
        self.plot_path = plot_path
        self.report = report or logger.info
        self.advise_every = advise_every
        self.save_every = save_every
        self.rows: list[dict] = []
        self.advice: float | None = None
        self.uid = ""
        self._lock = threading.Lock()
        self._new_row = threading.Condition(self._lock)
        self._figure = None
        self.saved: Path | None = None
        self.friedel_tolerance = friedel_tolerance
        #: one row per Friedel pair scored: frames, omegas, spots, consistent, share
        self.pairs: list[dict] = []
        self._spots_by_omega: dict[float, tuple[int, FrameSpots]] = {}

    # -------------------------------------------------------------------- documents
    def start(self, doc):
        with self._lock:
            self.uid = doc["uid"]
            self.rows = []
            self.advice = None
            self.pairs = []
            self._spots_by_omega = {}

    def stop(self, doc):
        self.save()

    # ------------------------------------------------------------- processor listener
    def on_frame(self, processor, row: dict, result) -> None:
        """Frame listener for :class:`~labdct_live.callbacks.live.LiveProcessor`."""
        with self._new_row:
            self.rows.append(row)
            n = len(self.rows)
            self._new_row.notify_all()
        snr = row.get("snr_p50")
        exposure = row.get("exposure")
        if snr and np.isfinite(snr) and snr > 0 and exposure and np.isfinite(exposure):
            advice = exposure_for_snr(exposure, snr, self.target_snr)
            changed = self.advice is None or abs(advice / self.advice - 1) > 0.2
            self.advice = advice
            if changed or n % self.advise_every == 0:
                self.report(
                    f"frame {row['frame']} (omega {row['omega']:.1f}°): {row['n_spots']} spots, "
                    f"median SNR {snr:.2f}, {100 * row['fraction_weak']:.0f} % below SNR 2; "
                    f"exposure {exposure:g} s -> {advice:.3g} s for median SNR "
                    f"{self.target_snr:g}")
        binary = getattr(result, "binary", None)
        if self.friedel_tolerance is not None and binary is not None:
            self._score_friedel_pair(processor, row, binary)
        if self.plot_path is not None and n % self.save_every == 0:
            self.save()

    def _score_friedel_pair(self, processor, row: dict, binary: np.ndarray) -> None:
        """Keep the frame's spot centroids; score the pair when its mate 180° away is in."""
        omega = row.get("omega")
        if omega is None or not np.isfinite(omega):
            return
        spots = frame_spots(binary)
        spots = FrameSpots(spots.shape, None, spots.centroids, spots.sizes, spots.static)
        key, mate_key = round(omega % 360.0, 3), round((omega + 180.0) % 360.0, 3)
        with self._lock:
            self._spots_by_omega[key] = (int(row["frame"]), spots)
            mate = self._spots_by_omega.get(mate_key)
        if mate is None:
            return
        geometry = getattr(processor, "geometry", None)
        if geometry is not None and geometry.detector_shape == binary.shape:
            mirror = friedel_mirror(geometry)
            exclude = geometry.beamstop_mask() if geometry.has_beamstop else None
        else:  # no geometry: the mirror about the detector's middle row
            mirror, exclude = (binary.shape[0] - 1) / 2.0, None
        control = max(DEFAULT_CONTROL_SHIFT, 2.5 * self.friedel_tolerance)
        forward = friedel_match(spots, mate[1], mirror, self.friedel_tolerance, control, exclude)
        backward = friedel_match(mate[1], spots, mirror, self.friedel_tolerance, control,
                                 exclude)
        n_spots = forward.spots + backward.spots
        consistent = forward.consistent + backward.consistent
        pair = {"frames": (mate[0], int(row["frame"])), "omega": float(omega),
                "spots": n_spots, "consistent": consistent,
                "share": consistent / n_spots if n_spots else 0.0}
        with self._lock:
            self.pairs.append(pair)
            n_pairs = len(self.pairs)
        if n_pairs % self.advise_every == 0:
                self.report(f"Friedel pair of frames {pair['frames'][0]} and {pair['frames'][1]}: "
                        f"{consistent / 2:.0f} consistent spots per frame, share "
                        f"{pair['share']:.2f}")

    def friedel_summary(self) -> dict:
        """Friedel pairs scored so far: ``{"pairs", "consistent_per_frame", "share"}``."""
        with self._lock:
            pairs = list(self.pairs)
        spots = sum(p["spots"] for p in pairs)
        consistent = sum(p["consistent"] for p in pairs)
        return {"pairs": len(pairs),
                "consistent_per_frame": consistent / (2 * len(pairs)) if pairs else 0.0,
                "share": consistent / spots if spots else 0.0}

    def latest_snr(self, after: int = 0, timeout: float = 0.0) -> float | None:
        """Median spot SNR of the newest frame, waiting up to ``timeout`` s until more than
        ``after`` frames have been processed (for adaptive plans)."""
        with self._new_row:
            self._new_row.wait_for(lambda: len(self.rows) > after, timeout)
            if not self.rows:
                return None
            value = self.rows[-1].get("snr_p50")
        return float(value) if value is not None and np.isfinite(value) else None

    # ------------------------------------------------------------------------ plot
    def figure(self):
        """The matplotlib figure: SNR (median and 5-95 % band) and spot count vs omega."""
        from matplotlib.figure import Figure

        with self._lock:
            rows = sorted((r for r in self.rows if r.get("status") == "ok"),
                          key=lambda r: r["frame"])
        with self._lock:
            pairs = sorted(self.pairs, key=lambda p: p["omega"])
        fig = Figure(figsize=(8, 7 if pairs else 5), layout="constrained")
        axes = fig.subplots(3 if pairs else 2, 1, sharex=True)
        ax_snr, ax_n = axes[0], axes[1]
        if rows:
            omega = np.array([r["omega"] for r in rows])
            ax_snr.fill_between(omega, [r["snr_p5"] for r in rows], [r["snr_p95"] for r in rows],
                                alpha=0.3, label="5-95 %")
            ax_snr.plot(omega, [r["snr_p50"] for r in rows], ".-", label="median")
            ax_n.plot(omega, [r["n_spots"] for r in rows], ".-", color="C2", label="spots")
            ax_n.plot(omega, [r["n_weak"] for r in rows], ".-", color="C3",
                      label="spots with SNR < 2")
        ax_snr.axhline(self.target_snr, color="k", ls="--", lw=1, label="target")
        ax_snr.set_ylabel("spot SNR")
        ax_snr.legend(loc="upper right", fontsize=8)
        ax_n.set_ylabel("spots per frame")
        if pairs:
            ax_f = axes[2]
            ax_f.plot([p["omega"] for p in pairs], [p["share"] for p in pairs], ".-",
                      color="C4", label="Friedel-consistent share of the pair's spots")
            ax_f.set_ylim(0, 1)
            ax_f.set_ylabel("Friedel share")
            ax_f.legend(loc="upper right", fontsize=8)
        axes[-1].set_xlabel("omega (°)")
        if rows:
            ax_n.legend(loc="upper right", fontsize=8)
        title = f"run {self.uid[:8]}"
        if self.advice is not None:
            title += f" — advised exposure {self.advice:.3g} s for SNR {self.target_snr:g}"
        fig.suptitle(title, fontsize=10)
        return fig

    def save(self) -> Path | None:
        """Write the PNG (when a ``plot_path`` is set); returns its path."""
        if self.plot_path is None:
            return None
        path = Path(str(self.plot_path).format(uid=safe_key(self.uid, "run uid")))
        path.parent.mkdir(parents=True, exist_ok=True)
        self.figure().savefig(path, dpi=100)
        self.saved = path
        return path
