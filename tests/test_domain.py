"""The check that a frame is like a model's training frames (labdct_live.models.domain)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from labdct_live.models.domain import (
    DOMAIN_STATISTICS,
    DomainCheck,
    domain_ranges,
    input_statistics,
)


def _frames(n: int, blur: float = 0.0, streaks: bool = False, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        level = np.full((384, 384), 500.0)
        if streaks:
            level[:, np.arange(384) % 16 < 3] += 150  # a fixed pattern of lines
        frame = rng.poisson(level).astype(np.float32)
        if blur:
            frame = level + ndimage.gaussian_filter(frame - level, blur) * 2.5
        for r, c in rng.integers(20, 364, (15, 2)):  # a few spots
            frame[r - 2:r + 3, c - 2:c + 3] += 800
        yield frame


def test_statistics_see_correlated_noise_structure_and_spots():
    white = input_statistics(next(_frames(1)))
    blurred = input_statistics(next(_frames(1, blur=1.0)))
    streaked = input_statistics(next(_frames(1, streaks=True)))
    assert set(white) == set(DOMAIN_STATISTICS)
    assert abs(white["correlation"]) < 0.05 and blurred["correlation"] > 0.4
    assert streaked["structure"] > 2 * white["structure"]
    assert 0 < white["bright_fraction"] < 0.05
    # a beam stop left out: its pixels do not count
    exclude = np.zeros((384, 384), bool)
    exclude[:, :300] = True
    assert np.isfinite(input_statistics(next(_frames(1)), exclude)["noise"])


def test_a_check_from_white_noise_frames_flags_a_blurred_detector():
    ranges = domain_ranges(_frames(12))
    assert ranges["frames"] == 12 and all(len(ranges[n]) == 2 for n in DOMAIN_STATISTICS)
    check = DomainCheck({n: tuple(ranges[n]) for n in DOMAIN_STATISTICS})
    assert check(next(_frames(1, seed=5))) == {}
    flags = check(next(_frames(1, blur=1.0, seed=6)))
    assert "correlation" in flags
    assert "correlation" in check.describe(flags) and "adapt" in check.describe(flags)
    with pytest.raises(ValueError, match="no frames"):
        domain_ranges([])


def test_the_check_comes_from_the_checkpoint_and_the_dl_method_warns_once(caplog):
    from labdct_live.methods import DLMethod
    from labdct_live.models import load_pretrained

    assert DomainCheck.from_metadata({}) is None
    assert DomainCheck.from_metadata({"metrics": {"input_domain": "nonsense"}}) is None
    model = load_pretrained()
    ranges = domain_ranges(_frames(8))
    model.metadata = {**model.metadata,
                      "metrics": {**model.metadata.get("metrics", {}), "input_domain": ranges}}
    method = DLMethod(model)
    assert method.domain is not None
    caplog.set_level("WARNING", logger="labdct_live.methods")
    results = [method.push(k, f)[0] for k, f in enumerate(_frames(3, blur=1.0, seed=9))]
    assert all("correlation" in r.extra["out_of_domain"] for r in results)
    assert sum("outside the model's training data" in r.getMessage()
               for r in caplog.records) == 1
    assert method.push(3, next(_frames(1, seed=10)))[0].extra["out_of_domain"] == {}
