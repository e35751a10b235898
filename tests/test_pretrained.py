"""The U-Net shipped with the package: loads offline and beats a threshold on the raw frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labdct_live.models import load_pretrained
from labdct_live.models.inference import Denoiser
from labdct_live.segmentation.metrics import evaluate_frames
from labdct_live.segmentation.spots import label_spots
from labdct_live.segmentation.threshold import threshold_segment
from labdct_live.simulation.background import background_for_geometry
from labdct_live.simulation.forward import Simulator
from labdct_live.simulation.microstructure import make_sample
from labdct_live.simulation.presets import preset
from labdct_live.training.synthesis import (
    normalize_frame,
    scale_for_median_snr,
    spot_statistics,
    synthesize_input,
)


@pytest.fixture(scope="module")
def held_out_crop():
    """A noisy 768² crop of a D35 sample not used in training (seed 5), median spot SNR 2.5,
    with its ground-truth spot labels."""
    spec, geometry = preset("D35")
    projection = Simulator(make_sample(spec, seed=5), geometry).project(47.0)
    background = background_for_geometry(geometry, 55).render()
    stats = spot_statistics(projection.clean, projection.labels)
    at = (np.rint(stats["row"]).astype(int), np.rint(stats["col"]).astype(int))
    scale = scale_for_median_snr(2.5, stats["mean"], background[at], 110.0, 1.0)
    noisy, _ = synthesize_input(projection.clean, background, scale=scale, r_bg=110.0,
                                rng=np.random.default_rng(5))
    frame = np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)
    window = (slice(100, 868), slice(1200, 1968))  # outside the beam stop, many spots
    return frame, window, projection.labels[window]


def test_shipped_model_loads_without_network_and_with_weights_only():
    model = load_pretrained()
    assert isinstance(model, torch.nn.Module)
    meta = getattr(model, "metadata", {})
    assert meta.get("inference", {}).get("threshold") is not None
    assert meta.get("metrics"), "the model card's validation metrics travel with the weights"


def test_shipped_model_beats_a_threshold_on_the_raw_frame(held_out_crop):
    frame, window, truth = held_out_crop
    denoiser = Denoiser()
    denoised = denoiser(frame)[window]
    dl = label_spots(threshold_segment(denoised, denoiser.threshold, 2))[0]
    f1_dl = evaluate_frames([(truth, dl, frame[window])]).summary["f1"]
    # the baseline gets its best threshold, chosen with the ground truth
    raw = normalize_frame(frame)[window]
    f1_raw = max(
        evaluate_frames([(truth, label_spots(threshold_segment(raw, t, 2))[0], None)]).summary["f1"]
        for t in np.linspace(0.05, 1.0, 20))
    assert f1_dl > f1_raw + 0.15, (f1_dl, f1_raw)
