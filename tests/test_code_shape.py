"""The code stays readable: no function in the four packages longer than MAX_LINES (issue 11)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 80  # def line to last line, docstring and comments included
PACKAGES = ("students", "teachers", "distill", "prune")


def long_functions(package: str) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_over_80_lines(package: str) -> None:
    assert long_functions(package) == []


def test_no_module_imports_another_packages_private_names() -> None:
    """``from other_package.module import _name`` couples a package to another's internals."""
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    top = node.module.split(".")[0]
                    if top in PACKAGES and top != package:
                        offenders += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names
                                      if a.name.startswith("_")]
    assert offenders == []


def test_packages_import_one_way() -> None:
    """students <- teachers <- distill <- prune: a package imports only the ones before it."""
    order = {name: i for i, name in enumerate(PACKAGES)}
    upward = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else (
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                for name in names:
                    top = name.split(".")[0]
                    if top in order and order[top] > order[package]:
                        upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert upward == []


def test_no_module_reaches_into_the_engines_private_names() -> None:
    """One training loop (issue 27): sweep, api, pipeline, prune and the benchmarks use the engine's public names
    only, so the loop can change without them."""
    offenders = []
    for path in sorted(p for folder in (*PACKAGES, "benchmarks") for p in (ROOT / folder).rglob("*.py")):
        if path == ROOT / "distill" / "engine.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id == "engine"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} engine.{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("engine"):
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {a.name}" for a in node.names
                              if a.name.startswith("_")]
    assert offenders == []
