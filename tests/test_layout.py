"""The package layout: layers import downwards only, every public name resolves, old paths work."""

from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import pytest

import labdct_live
from labdct_live import _moved

PACKAGE = Path(labdct_live.__file__).parent
#: The layers, bottom first (docs/index.md draws them): a module may import its own layer and
#: those before it.
LAYERS = ["io", "grains", "simulation", "segmentation", "reconstruction", "training", "models",
          "methods", "export", "acquisition", "catalog", "callbacks", "live", "cli"]
SUBPACKAGES = [name for name in LAYERS if (PACKAGE / name).is_dir()]
#: Modules longer than the ~500-line guideline, each one job (docs/index.md says why).
LONG_MODULES = {"acquisition/detector.py", "training/synthesis.py", "models/train.py",
                "callbacks/live.py"}


def _layer(path: Path) -> str | None:
    top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    return top if top in LAYERS else None


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name


def test_layers_import_downwards_only():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        layer = _layer(path)
        if layer is None:
            continue
        for line, module in _imports(path):
            parts = module.split(".")
            if parts[0] != "labdct_live" or len(parts) < 2 or parts[1] not in LAYERS:
                continue
            if LAYERS.index(parts[1]) > LAYERS.index(layer):
                upward.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert upward == []


def test_no_module_imports_an_old_path():
    old = set(_moved.MOVED) | set(_moved.SPLIT)
    found = [f"{path.relative_to(PACKAGE)}:{line} {module}"
             for path in PACKAGE.rglob("*.py") if path.name != "_moved.py"
             for line, module in _imports(path) if module in old]
    assert found == []


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_every_public_name_of_a_subpackage_resolves(name):
    package = importlib.import_module(f"labdct_live.{name}")
    public = getattr(package, "__all__", [])
    if name != "cli":
        assert public, f"labdct_live.{name} lists no public names"
    for attribute in public:
        assert getattr(package, attribute) is not None


def test_modules_stay_small():
    long = {path.relative_to(PACKAGE).as_posix(): len(path.read_text().splitlines())
            for path in PACKAGE.rglob("*.py") if len(path.read_text().splitlines()) > 500}
    assert set(long) <= LONG_MODULES, long


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_a_moved_module_is_the_new_one_under_its_old_name(old):
    with pytest.warns(DeprecationWarning, match=_moved.MOVED[old].replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is importlib.import_module(_moved.MOVED[old])


@pytest.mark.parametrize("old", sorted(_moved.SPLIT))
def test_a_split_module_still_offers_every_public_name(old):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = importlib.import_module(old)
    for name, where in _moved.SPLIT[old].items():
        assert getattr(module, name) is getattr(importlib.import_module(where), name)
