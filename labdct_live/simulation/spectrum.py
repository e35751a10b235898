"""Tungsten-anode tube spectrum, detector efficiency and attenuation (docs/physics.md §4).

The spectrum comes from `spekpy <https://bitbucket.org/spekpy/spekpy_release>`_, which models
bremsstrahlung and characteristic lines of a W anode offline. Linear attenuation coefficients
(sample absorption, CsI scintillator efficiency) come from spekpy's NIST tables: the
transmission of a thin filter of the material is ``exp(-mu * t)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["Spectrum", "tube_spectrum", "linear_attenuation", "HC_KEV_ANGSTROM"]

#: h·c in keV·Å: E[keV] = 12.398 / lambda[Å].
HC_KEV_ANGSTROM = 12.398419843

_THIN_MM = 1e-3  # a filter thin enough that exp(-mu t) never underflows in the 10-160 keV band


@lru_cache(maxsize=8)
def _spekpy_spectrum(kvp: float, anode_angle: float, filters: tuple
                     ) -> tuple[np.ndarray, np.ndarray]:
    import spekpy

    spek = spekpy.Spek(kvp=kvp, th=anode_angle)
    for material, thickness_mm in filters:
        spek.filter(material, thickness_mm)
    energy, fluence = spek.get_spectrum()
    return np.asarray(energy, dtype=float), np.asarray(fluence, dtype=float)


@lru_cache(maxsize=32)
def linear_attenuation(material: str, kvp: float = 150.0) -> tuple[np.ndarray, np.ndarray]:
    """Linear attenuation coefficient of a material versus energy.

    Parameters
    ----------
    material : str
        A spekpy material name (element symbols such as ``"Al"``, ``"Fe"``, or compounds such
        as ``"Cesium Iodide"``), at its tabulated density.
    kvp : float
        Highest energy needed (keV).

    Returns
    -------
    energy_kev, mu_per_mm : ndarray
    """
    energy, bare = _spekpy_spectrum(float(kvp), 12.0, ())
    _, filtered = _spekpy_spectrum(float(kvp), 12.0, ((material, _THIN_MM),))
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = -np.log(filtered / bare) / _THIN_MM
    valid = np.isfinite(mu) & (bare > 0)
    return energy[valid], mu[valid]


@dataclass(frozen=True)
class Spectrum:
    """Effective source spectrum seen by the detector, on a regular energy grid.

    ``weight(E) = I0(E) * DQE(E)``, normalised to a maximum of 1, zero outside
    ``[e_min, e_max]``; ``mu`` is the sample's linear attenuation (1/mm) on the same grid.
    """

    energy: np.ndarray  #: keV, regular grid
    weight: np.ndarray  #: relative photons x detection efficiency
    mu: np.ndarray  #: sample attenuation, 1/mm
    e_min: float
    e_max: float

    def __call__(self, energy_kev: np.ndarray) -> np.ndarray:
        return np.interp(energy_kev, self.energy, self.weight, left=0.0, right=0.0)


def tube_spectrum(
    kvp: float = 140.0,
    sample_material: str = "Al",
    *,
    e_min: float = 13.0,
    e_max: float | None = None,
    scintillator: str | None = "Cesium Iodide",
    scintillator_mm: float = 0.150,
    anode_angle: float = 12.0,
) -> Spectrum:
    """The W-anode spectrum at ``kvp`` times the detector's quantum efficiency.

    Parameters
    ----------
    kvp : float
        Tube voltage (kV).
    sample_material : str
        Material whose attenuation is tabulated for the absorption term.
    e_min, e_max : float
        Useful band (keV); the forward model uses 13-138 keV at 140 kV. ``e_max`` defaults to
        ``kvp - 2``.
    scintillator : str or None
        spekpy material of the scintillator; None for an ideal detector (DQE = 1).
    scintillator_mm : float
        Scintillator thickness (mm); DQE(E) = 1 - exp(-mu(E) t).
    anode_angle : float
        Anode take-off angle (degrees).
    """
    if not kvp > e_min:
        raise ValueError(f"kvp must exceed e_min = {e_min} keV, got {kvp!r}")
    e_max = float(kvp - 2.0 if e_max is None else e_max)
    energy, fluence = _spekpy_spectrum(float(kvp), float(anode_angle), (("Be", 0.5),))
    weight = fluence.copy()
    if scintillator is not None:
        e_s, mu_s = linear_attenuation(scintillator, kvp)
        weight *= 1.0 - np.exp(-np.interp(energy, e_s, mu_s) * scintillator_mm)
    weight[(energy < e_min) | (energy > e_max)] = 0.0
    weight /= weight.max()
    e_m, mu_m = linear_attenuation(sample_material, kvp)
    mu = np.interp(energy, e_m, mu_m)
    return Spectrum(energy=energy, weight=weight, mu=mu, e_min=float(e_min), e_max=e_max)
