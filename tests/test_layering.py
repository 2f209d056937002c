"""The package's dependencies point one way: cli -> pipeline -> adaptation -> (diffusion,
evaluation, training) -> (data, models) -> utils. A package imports only the ones below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "diffdass"
#: package -> the diffdass packages it may import (besides itself)
ALLOWED = {
    "utils": set(),
    "data": {"utils"},
    "models": {"utils"},
    "diffusion": {"utils"},
    "training": {"utils"},
    "evaluation": {"data", "models", "utils"},
    "adaptation": {"training", "diffusion", "evaluation", "data", "models", "utils"},
    "pipeline": {"training", "adaptation", "diffusion", "evaluation", "data", "models", "utils"},
    "cli": {
        "training",
        "pipeline",
        "adaptation",
        "diffusion",
        "evaluation",
        "data",
        "models",
        "utils",
    },
}


def diffdass_imports(file: Path) -> set[str]:
    """The diffdass packages a module imports (at any depth of the module, lazily or not)."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "diffdass" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_package_is_in_the_layering():
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package):
    wrong = {}
    for file in sorted((ROOT / package).rglob("*.py")):
        bad = diffdass_imports(file) - ALLOWED[package] - {package}
        if bad:
            wrong[str(file.relative_to(ROOT))] = sorted(bad)
    assert not wrong, wrong
