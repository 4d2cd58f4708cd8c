"""The package's shape: every module in a layer, and no import hidden inside a function.

The layers themselves are checked by import-linter (``lint-imports``, contracts in
``pyproject.toml``), which sees imports made inside functions too. This test adds
what it does not say: no flowcore module is imported inside a function, where an
import usually hides a cycle, by an ``import`` statement or by ``importlib``.

With one exception, which exists for cold start (issue 17: ``import flowcore`` costs
what a first flow uses): a package's module-level ``__getattr__`` (PEP 562) may import
a submodule when one of the package's rarely used public names is first read
(``flowcore.asset``, ``flowcore.store.MemoryStore``). Such a package also imports each
of those names under ``if TYPE_CHECKING:``, so type checkers, IDEs and import-linter
see every name and every dependency as if imported at the top; that is checked here.
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


def _imports_flowcore_dynamically(node: ast.AST) -> TypeGuard[ast.Call]:
    """``importlib.import_module(...)`` or ``__import__(...)`` of a flowcore module: a
    name relative to a package (``import_module(".memory", __name__)``) or a literal
    ``flowcore...``. (An absolute name held in a variable is the user's module: a flow
    file, an asset module.)"""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__"):
        return False
    if name == "import_module" and (len(node.args) > 1 or node.keywords):
        return True  # relative to a package: one of flowcore's
    first = node.args[0] if node.args else None
    return isinstance(first, ast.Constant) and str(first.value).startswith((".", "flowcore"))


def _is_lazy_getattr(path: Path, tree: ast.Module, func: ast.AST) -> bool:
    """A package's PEP 562 ``__getattr__``: defined at module level of an ``__init__.py``
    (at the top or under an ``if``, such as ``if not TYPE_CHECKING:``)."""
    if path.name != "__init__.py" or not isinstance(func, ast.FunctionDef):
        return False
    if func.name != "__getattr__":
        return False
    top = [*tree.body, *(n for s in tree.body if isinstance(s, ast.If) for n in s.body)]
    return func in top


def test_no_flowcore_module_is_imported_inside_a_function() -> None:
    found = []
    for path in _modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            lazy = _is_lazy_getattr(path, tree, func)
            for node in ast.walk(func):
                if _imports_flowcore(node) or (_imports_flowcore_dynamically(node) and not lazy):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert found == []


def _type_checking_names(tree: ast.Module) -> set[str]:
    """The names imported under ``if TYPE_CHECKING:`` at module level."""
    names: set[str] = set()
    for statement in tree.body:
        if (
            isinstance(statement, ast.If)
            and isinstance(statement.test, ast.Name)
            and statement.test.id == "TYPE_CHECKING"
        ) or (
            isinstance(statement, ast.If)
            and isinstance(statement.test, ast.Attribute)
            and statement.test.attr == "TYPE_CHECKING"
        ):
            for node in ast.walk(statement):
                if isinstance(node, ast.ImportFrom | ast.Import):
                    names.update(a.asname or a.name.split(".")[0] for a in node.names)
    return names


def _bound_names(tree: ast.Module) -> set[str]:
    """The names a module binds at its top level, outside ``if TYPE_CHECKING:``."""
    names: set[str] = set()
    for statement in tree.body:
        if isinstance(statement, ast.Import | ast.ImportFrom):
            names.update(a.asname or a.name.split(".")[0] for a in statement.names)
        elif isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(statement.name)
        elif isinstance(statement, ast.Assign | ast.AnnAssign):
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _all(tree: ast.Module) -> list[str]:
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in statement.targets
        ):
            value = ast.literal_eval(statement.value)
            assert isinstance(value, list)
            return [str(name) for name in value]
    return []


def test_a_package_that_imports_names_lazily_shows_every_name_to_type_checkers() -> None:
    lazy_packages = []
    hidden = []
    for path in _modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        if not any(_is_lazy_getattr(path, tree, func) for func in ast.walk(tree)):
            continue
        lazy_packages.append(str(path.relative_to(PACKAGE)))
        seen = _bound_names(tree) | _type_checking_names(tree)
        hidden += [f"{path.relative_to(PACKAGE)}: {n}" for n in _all(tree) if n not in seen]
    assert lazy_packages == ["__init__.py", "store/__init__.py", "telemetry/__init__.py"]
    assert hidden == []
