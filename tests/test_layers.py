"""The package's shape: every module in a layer, and no import hidden inside a function.

The layers themselves are checked by import-linter (``lint-imports``, contracts in
``pyproject.toml``), which sees imports made inside functions too. This test adds
what it does not say: no flowcore module is imported inside a function, where an
import usually hides a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TypeGuard

import flowcore

PACKAGE = Path(flowcore.__file__).parent


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _imports_flowcore(node: ast.AST) -> TypeGuard[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").startswith("flowcore")
    if isinstance(node, ast.Import):
        return any(alias.name.startswith("flowcore") for alias in node.names)
    return False


def test_no_flowcore_module_is_imported_inside_a_function() -> None:
    found = []
    for path in _modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if _imports_flowcore(node):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert found == []
