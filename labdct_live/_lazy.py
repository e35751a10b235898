"""Lazy subpackage namespaces: ``from labdct_live.grains import GrainMap`` imports one module.

Each subpackage's ``__init__`` lists its public names by submodule and calls :func:`attach`;
a name is imported on first use, so importing the package (or one of its submodules) stays as
cheap as importing that submodule (``labdct-live --help`` needs no torch, tiled or matplotlib).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence

__all__ = ["attach"]


def attach(package: str, submodules: Mapping[str, Sequence[str]]
           ) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` of a package exporting ``submodules``' names.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    submodules : mapping of str to sequence of str
        Public names by the submodule (relative name) that defines them.

    Examples
    --------
    >>> import labdct_live.grains as grains
    >>> grains.GrainMap.__module__
    'labdct_live.grains.grainmap'
    """
    where = {name: sub for sub, names in submodules.items() for name in names}
    public = sorted(where)
    children = {sub.split(".")[0] for sub in submodules}

    def __getattr__(name: str) -> object:
        if name in where:
            module = importlib.import_module(f"{package}.{where[name]}")
            return getattr(module, name)
        if name in children:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(public) | children)

    return __getattr__, __dir__, public
