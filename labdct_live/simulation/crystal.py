"""Materials, reflections and structure factors for cubic crystals (docs/physics.md §2, §4).

A :class:`Material` knows its lattice, the first ``n_families`` allowed hkl families (ordered
by h² + k² + l², with every member of each family including Friedel mates) and the squared
structure factor of each family from Cromer-Mann atomic form factors with a Debye-Waller term.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from itertools import product

import numpy as np

from labdct_live.grains.phase import ALUMINIUM, Phase

__all__ = ["Material", "MATERIALS", "MaterialError", "Reflections", "atomic_form_factor",
           "get_material"]


class MaterialError(ValueError):
    """An unknown or inconsistent material."""


# Cromer-Mann coefficients (International Tables for Crystallography, Vol. C, Table 6.1.1.4):
# f(s) = sum_i a_i exp(-b_i s^2) + c with s = sin(theta)/lambda in 1/Å.
_CROMER_MANN = {
    "Al": ((6.4202, 1.9002, 1.5936, 1.9646), (3.0387, 0.7426, 31.5472, 85.0886), 1.1151),
    "Fe": ((11.7695, 7.3573, 3.5222, 2.3045), (4.7611, 0.3072, 15.3535, 76.8805), 1.0369),
}

# Fractional positions of the atoms of the conventional cubic cell.
_BASIS = {
    "fcc": np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]),
    "bcc": np.array([[0, 0, 0], [0.5, 0.5, 0.5]]),
}
_SPACE_GROUP = {"fcc": 225, "bcc": 229}


def atomic_form_factor(element: str, s: np.ndarray) -> np.ndarray:
    """Atomic scattering factor ``f(s)`` in electrons, ``s = sin(theta)/lambda`` (1/Å)."""
    try:
        a, b, c = _CROMER_MANN[element]
    except KeyError:
        raise MaterialError(
            f"no form-factor coefficients for element {element!r}; known: {sorted(_CROMER_MANN)}"
        ) from None
    s2 = np.asarray(s, dtype=float) ** 2
    return sum(ai * np.exp(-bi * s2) for ai, bi in zip(a, b)) + c


@dataclass(frozen=True)
class Material:
    """A cubic single-element material.

    Parameters
    ----------
    name : str
        Element symbol, also the key of its form-factor coefficients.
    lattice : {"fcc", "bcc"}
        Bravais lattice.
    a : float
        Lattice parameter (Å).
    n_families : int
        How many hkl families to keep (the forward model uses the first 4).
    debye_waller_u : float
        Mean-square displacement U (Å²) of the Debye-Waller factor exp(-8π²U s²).
    density : float
        Mass density (g/cm³), for absorption.
    """

    name: str
    lattice: str
    a: float
    n_families: int = 4
    debye_waller_u: float = 0.01
    density: float = 2.70
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.lattice not in _BASIS:
            raise MaterialError(f"lattice must be 'fcc' or 'bcc', got {self.lattice!r}")
        if not self.a > 0:
            raise MaterialError(f"lattice parameter a must be positive, got {self.a!r}")
        if self.n_families < 1:
            raise MaterialError(f"n_families must be at least 1, got {self.n_families!r}")

    @property
    def space_group(self) -> int:
        return _SPACE_GROUP[self.lattice]

    @property
    def phase(self) -> Phase:
        """The material as a grain map's phase (cubic cell, space group and symbol)."""
        symbol = {"fcc": "F m -3 m", "bcc": "I m -3 m"}[self.lattice]
        return Phase(self.name, self.space_group, (self.a, self.a, self.a, 90.0, 90.0, 90.0),
                     symbol)

    @property
    def B(self) -> np.ndarray:
        """Reciprocal-lattice matrix with the 2π factor (1/Å): ``G_crystal = B @ hkl``."""
        return np.eye(3) * (2.0 * np.pi / self.a)

    def _geometric_structure_factor(self, hkl: np.ndarray) -> np.ndarray:
        phases = 2j * np.pi * hkl @ _BASIS[self.lattice].T
        return np.exp(phases).sum(axis=-1)

    @cached_property
    def reflections(self) -> Reflections:
        """Every allowed hkl of the first ``n_families`` families, Friedel mates included."""
        rng = int(np.ceil(np.sqrt(8 * self.n_families + 8))) + 1
        hkl = np.array(list(product(range(-rng, rng + 1), repeat=3)))
        hkl = hkl[np.any(hkl != 0, axis=1)]
        allowed = np.abs(self._geometric_structure_factor(hkl)) > 1e-6
        hkl = hkl[allowed]
        n2 = (hkl**2).sum(axis=1)
        families = np.unique(n2)[: self.n_families]
        keep = np.isin(n2, families)
        hkl, n2 = hkl[keep], n2[keep]
        order = np.lexsort((-hkl[:, 2], -hkl[:, 1], -hkl[:, 0], n2))
        hkl, n2 = hkl[order], n2[order]
        family_index = np.searchsorted(families, n2)
        g_norm = 2.0 * np.pi * np.sqrt(n2) / self.a
        s = g_norm / (4.0 * np.pi)  # sin(theta)/lambda = 1/(2d) = |G|/(4π)
        f = atomic_form_factor(self.name, s) * np.exp(-8 * np.pi**2 * self.debye_waller_u * s**2)
        f_squared = np.abs(self._geometric_structure_factor(hkl)) ** 2 * f**2
        return Reflections(hkl=hkl, family=family_index, family_n2=families,
                           g_norm=g_norm, f_squared=f_squared)

    def to_dict(self) -> dict:
        return {"name": self.name, "lattice": self.lattice, "a": self.a,
                "space_group": self.space_group, "n_families": self.n_families}


@dataclass(frozen=True)
class Reflections:
    """Reflection list of a material; arrays are aligned on the first axis."""

    hkl: np.ndarray  #: (n, 3) int Miller indices
    family: np.ndarray  #: (n,) index into ``family_n2``
    family_n2: np.ndarray  #: (f,) h²+k²+l² of each family
    g_norm: np.ndarray  #: (n,) |G| in 1/Å (2π convention)
    f_squared: np.ndarray  #: (n,) |F_hkl|² in electrons², Debye-Waller included

    def __len__(self) -> int:
        return len(self.hkl)

    def multiplicities(self) -> np.ndarray:
        return np.bincount(self.family, minlength=len(self.family_n2))


#: The two materials of the seed paper: aluminium (training samples) and iron (experiment).
#: Aluminium's lattice parameter is the grain maps' (:data:`labdct_live.grains.phase.ALUMINIUM`):
#: one value, so that a simulated sample and its ground-truth grain map agree.
MATERIALS = {
    "Al": Material("Al", "fcc", ALUMINIUM.unit_cell[0], density=2.699),
    "Fe": Material("Fe", "bcc", 2.8665, density=7.874),
}


def get_material(name: str | Material) -> Material:
    """Look a material up by name (``"Al"``, ``"Fe"``); a :class:`Material` passes through."""
    if isinstance(name, Material):
        return name
    try:
        return MATERIALS[name]
    except KeyError:
        raise MaterialError(
            f"unknown material {name!r}; choose one of {sorted(MATERIALS)}") from None
