"""What ``pyproject.toml`` declares: every third-party module the package imports comes from a declared
distribution (core dependencies, or an extra for optional features), so a clean install has it. And the
tests' own layout: shared helpers live in ``tests/helpers`` and ``conftest.py``, not in test modules."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Imported by the scoring CLI's own modules: a plain ``pip install autext-jax`` must bring them.
CORE_MODULES = ("infer", "inputs", "writers", "records", "corpus", "paths", "engine", "api")


def _requirement_names(requirements: list[str]) -> set[str]:
    return {_normal(re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0]) for r in requirements}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return {m for m in out if m not in sys.stdlib_module_names and m != "autext_jax"}


def _distributions(module: str) -> set[str]:
    return {_normal(d) for d in importlib.metadata.packages_distributions().get(module, [])}


def test_every_imported_module_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = _requirement_names(project["dependencies"])
    anywhere = core.union(*(_requirement_names(r) for r in project["optional-dependencies"].values()))
    for path in sorted((REPO / "autext_jax").rglob("*.py")):
        is_core = path.parent.name == "autext_jax" and path.stem in CORE_MODULES
        for module in _imports(path):
            found = _distributions(module)
            if not found:  # not installed here (e.g. libtpu, only on TPU VMs): nothing to check
                continue
            declared = core if is_core else anywhere
            assert found & declared, f"{path.relative_to(REPO)} imports {module} ({found}): declare it"


def test_no_test_module_imports_another_test_module():
    for path in sorted((REPO / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                module = name.removeprefix("tests.")
                assert not module.startswith("test_"), f"{path.name} imports {name}: move it to tests/helpers"
