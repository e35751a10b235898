"""Crystal phases of a grain map: name, space group, lattice, and the proper point group used
to reduce orientations to the fundamental zone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ALUMINIUM",
    "GrainMapError",
    "Phase",
]


class GrainMapError(ValueError):
    """A grain map that cannot be built or used as asked; the message names the parameter."""


@dataclass(frozen=True)
class Phase:
    """A crystallographic phase of a grain map.

    Parameters
    ----------
    name : str
        Phase name, e.g. ``"Aluminum"``.
    space_group : int
        International space-group number (1-230).
    unit_cell : tuple of 6 float
        ``(a, b, c, alpha, beta, gamma)`` in Å and degrees.
    hermann_mauguin : str, optional
        Space-group symbol, e.g. ``"F m -3 m"``.
    """

    name: str
    space_group: int
    unit_cell: tuple[float, float, float, float, float, float]
    hermann_mauguin: str = ""

    def __post_init__(self) -> None:
        if not 1 <= int(self.space_group) <= 230:
            raise GrainMapError(
                f"Phase {self.name!r}: space_group={self.space_group} is not in 1-230"
            )
        cell = tuple(float(v) for v in self.unit_cell)
        if len(cell) != 6:
            raise GrainMapError(
                f"Phase {self.name!r}: unit_cell needs 6 values (a, b, c, alpha, beta, gamma),"
                f" got {len(cell)}"
            )
        object.__setattr__(self, "unit_cell", cell)
        object.__setattr__(self, "space_group", int(self.space_group))

    @property
    def is_cubic(self) -> bool:
        """True for the cubic space groups 195-230."""
        return 195 <= self.space_group <= 230

    @property
    def point_group(self):
        """The proper point group (rotations only) as an :class:`orix.quaternion.Symmetry`."""
        from orix.quaternion.symmetry import get_point_group

        return get_point_group(self.space_group, proper=True)

    @classmethod
    def coerce(cls, value: Phase | Mapping[str, Any]) -> Phase:
        """Make a :class:`Phase` from a Phase or a dict with the same keys."""
        if isinstance(value, Phase):
            return value
        if isinstance(value, Mapping):
            return cls(**dict(value))
        raise GrainMapError(f"phases: expected Phase or dict, got {type(value).__name__}")


#: The default phase (the paper's virtual samples are aluminium).
ALUMINIUM = Phase("Aluminum", 225, (4.04958, 4.04958, 4.04958, 90.0, 90.0, 90.0), "F m -3 m")
