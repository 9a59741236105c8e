"""The package's shape, checked from the source: scoring never imports training, small modules, docstrings."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "autext_jax"
SCORING = sorted([*PACKAGE.glob("*.py"), *(PACKAGE / "data").glob("*.py")])
SOURCES = sorted(
    p for folder in ("autext_jax", "tools", "benchmarks") for p in (REPO / folder).rglob("*.py")
)
MAX_LINES = 520


def _imported_modules(path: Path) -> set[str]:
    """Every module an ``import``/``from`` names anywhere in the file (functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_scan_sees_imports_inside_functions(tmp_path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from autext_jax.train import loop\n")
    assert "autext_jax.train.loop" in _imported_modules(sample)


@pytest.mark.parametrize("path", SCORING, ids=lambda p: str(p.relative_to(REPO)))
def test_scoring_modules_never_import_training(path: Path) -> None:
    imported = _imported_modules(path)
    upward = sorted(m for m in imported if m == "autext_jax.train" or m.startswith("autext_jax.train."))
    assert not upward, f"{path.relative_to(REPO)} imports {upward}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_module_is_small_and_says_what_it_owns(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"{path.relative_to(REPO)} has {len(text.splitlines())} lines"
    assert ast.get_docstring(ast.parse(text)), f"{path.relative_to(REPO)} has no module docstring"


@pytest.mark.parametrize("path", [p for p in SOURCES if not p.is_relative_to(REPO / "benchmarks")])
def test_no_module_puts_the_checkout_on_sys_path(path: Path) -> None:
    """Tools are a package (``python -m tools.NAME``): none finds its neighbours by editing ``sys.path``."""
    hacks = [line for line in path.read_text().splitlines() if "sys.path" in line and "__file__" in line]
    assert not hacks, f"{path.relative_to(REPO)}: {hacks}"


def test_every_package_folder_is_a_regular_package() -> None:
    """setuptools' package discovery skips folders without ``__init__.py``: a wheel would lack them."""
    folders = {p.parent for p in PACKAGE.rglob("*.py")}
    assert sorted(f for f in folders if not (f / "__init__.py").is_file()) == []
