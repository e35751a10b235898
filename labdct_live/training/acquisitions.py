"""Acquisitions: sample, geometry and exposure of each simulated scan a training set is made of."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from labdct_live.simulation.geometry import Geometry
from labdct_live.simulation.microstructure import SampleSpec
from labdct_live.simulation.presets import preset
from labdct_live.training.synthesis import random_acquisition

__all__ = [
    "Acquisition",
    "paper_acquisitions",
    "varied_acquisitions",
]


@dataclass(frozen=True)
class Acquisition:
    """A virtual sample in a geometry: what the cache simulates."""

    name: str
    spec: SampleSpec
    geometry: Geometry
    sample_seed: int

    def to_dict(self) -> dict:
        return {"name": self.name, "spec": self.spec.to_dict(),
                "geometry": self.geometry.to_dict(), "sample_seed": int(self.sample_seed)}


def paper_acquisitions(samples: Sequence[str] = ("D18", "D35", "D64"), seed: int = 0
                       ) -> list[Acquisition]:
    """The presets ``samples`` at their own (the paper's) geometry, one sample seed each."""

    seeds = np.random.SeedSequence([seed, 1]).generate_state(len(samples))
    return [Acquisition(name, *preset(name), int(s)) for name, s in zip(samples, seeds)]


def varied_acquisitions(n: int, seed: int = 0, **options) -> list[Acquisition]:
    """``n`` random samples and geometries
    (:func:`labdct_live.training.synthesis.random_acquisition`)."""

    out = []
    for k, s in enumerate(np.random.SeedSequence([seed, 2]).spawn(n)):
        rng = np.random.default_rng(s)
        spec, geometry = random_acquisition(rng, **options)
        out.append(Acquisition(f"varied{k:03d}-{spec.name}", spec, geometry,
                               int(rng.integers(2**31))))
    return out
