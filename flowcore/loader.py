"""Loading a flow named on the command line: ``path/to/file.py:flow_name``.

The file is imported as a module of its own, under a name made from its
resolved path, so two files called ``flows.py`` never shadow each other and
nothing the user has installed under the same name is picked up instead. The
name is the same every time the same file is loaded, in every process: a
task's cache key includes its module's name (and a pickled result names the
module of its class), so a name that changed per load would make each
``flowcore run`` miss the cache of the one before. Its folder goes first on
``sys.path``, as when the file is run as a script, so its sibling imports
(``from helpers import ...``) work.

Parameters given as text (``--param pages=20``) are converted by the flow
function's annotations with msgspec, so ``pages: int`` gets ``20``, not ``"20"``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import re
import sys
import traceback
import typing
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec

from .errors import ConfigurationError
from .flow import Flow
from .task import Task

__all__ = [
    "FlowLoadError",
    "convert_param",
    "flow_kwargs",
    "flows_in",
    "load_flow",
    "load_module",
    "split_target",
]


class FlowLoadError(ConfigurationError):
    """The flow named on the command line could not be loaded; the message says why.

    ``cause`` is the exception the user's module raised while being imported,
    if that was the problem (the CLI shows its traceback on request).
    """

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


def split_target(target: str) -> tuple[Path, str | None]:
    """``"dir/flows.py:etl"`` → ``(Path("dir/flows.py"), "etl")``; the name is optional.

    Split on the last colon, so a Windows drive letter (``C:\\x.py:etl``) stays in the path.
    """
    path, sep, name = target.rpartition(":")
    if sep and name and not name.startswith(("\\", "/")) and path:
        return Path(path), name
    return Path(target), None


def load_module(path: Path) -> ModuleType:
    """Import the Python file at ``path`` as a fresh module."""
    if not path.exists():
        raise FlowLoadError(
            f"no such file: {path} (resolved from {Path.cwd()}); give the path of the "
            "Python file that defines the flow, e.g. `flowcore run flows.py:my_flow`"
        )
    if not path.is_file():
        raise FlowLoadError(f"{path} is a folder; give the path of a Python file inside it")
    resolved = path.resolve()
    folder = str(resolved.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    stem = re.sub(r"\W", "_", resolved.stem)
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    module_name = f"_flowcore_user_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise FlowLoadError(f"{path} cannot be imported as a Python module; give a .py file")
    module = importlib.util.module_from_spec(spec)
    # Registered before running it, as `import` does: dataclasses, pickling and
    # typing.get_type_hints look the module up by name while it executes.
    previous = sys.modules.get(module_name)  # this file, loaded before in this process
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        if previous is None:
            sys.modules.pop(module_name, None)
        else:
            sys.modules[module_name] = previous
        if not isinstance(exc, Exception):
            raise
        # Keep only the frames from the user's file on: importlib's own are noise to them.
        tb = exc.__traceback__
        while tb is not None and Path(tb.tb_frame.f_code.co_filename) != resolved:
            tb = tb.tb_next
        if tb is not None:
            exc = exc.with_traceback(tb)
        raise FlowLoadError(
            f"importing {path} failed{_where(exc, resolved)}: {type(exc).__name__}: {exc}",
            cause=exc,
        ) from exc
    return module


def _where(exc: BaseException, path: Path) -> str:
    """`` at line N`` of the user's file where the import failed, when we can tell."""
    if isinstance(exc, SyntaxError):
        return ""  # its message already names the line
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    return f" at line {lines[-1]}" if lines and lines[-1] is not None else ""


def flows_in(module: ModuleType) -> dict[str, Flow[Any, Any]]:
    """The flows a module defines, by attribute name, in definition order."""
    return {key: value for key, value in vars(module).items() if isinstance(value, Flow)}


def load_flow(target: str) -> Flow[Any, Any]:
    """The flow ``target`` (``FILE.py:flow_name``) names.

    Without ``:flow_name`` the file must define exactly one flow, which is used.
    """
    path, name = split_target(target)
    module = load_module(path)
    flows = flows_in(module)
    available = ", ".join(flows) or "none"
    if name is None:
        if len(flows) == 1:
            return next(iter(flows.values()))
        raise FlowLoadError(
            f"{path} defines {len(flows)} flows ({available}); name the one to run: "
            f"`flowcore run {path}:FLOW_NAME`"
            if flows
            else f"{path} defines no flow; decorate an `async def` in it with @flowcore.flow"
        )
    value = getattr(module, name, None)
    if value is None and name not in vars(module):
        raise FlowLoadError(
            f"{path} has no flow named {name!r}; the flows it defines: {available}"
            + ("" if flows else " (decorate an `async def` with @flowcore.flow to make one)")
        )
    if not isinstance(value, Flow):
        what = "a task" if isinstance(value, Task) else f"an object of type {type(value).__name__}"
        raise FlowLoadError(
            f"{name!r} in {path} is {what}, not a flow; decorate it with @flowcore.flow "
            f"(flows in this file: {available})"
        )
    return value


# -- parameters from the command line ----------------------------------------------------


def _annotations(flow: Flow[Any, Any]) -> dict[str, Any]:
    """The flow function's resolved annotations; unresolvable ones count as ``Any``."""
    try:
        return typing.get_type_hints(flow.fn)
    except Exception:  # a forward reference that does not resolve at run time
        return {
            name: p.annotation
            for name, p in flow.signature.parameters.items()
            if not isinstance(p.annotation, str) and p.annotation is not p.empty
        }


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def convert_param(name: str, raw: str, annotation: Any) -> Any:
    """A ``--param`` value as the flow's annotation asks; JSON (or the string) when unannotated."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return raw
    try:
        return msgspec.convert(raw, annotation, strict=False)
    except msgspec.ValidationError as exc:
        try:  # lists, dicts and structs are given as JSON: --param ids='[1, 2]'
            return msgspec.json.decode(raw, type=annotation, strict=False)
        except (msgspec.ValidationError, msgspec.DecodeError):
            pass
        problem = str(exc)
    except TypeError as exc:
        problem = f"flowcore cannot build this type from text ({exc})"
    raise ConfigurationError(
        f"--param {name}: expected {_type_name(annotation)}, got {raw!r} ({problem}); "
        f"give a value of type {_type_name(annotation)}"
    )


def _signature_text(flow: Flow[Any, Any]) -> str:
    params = [str(p) for p in flow.signature.parameters.values()]
    return ", ".join(params) or "none"


def flow_kwargs(flow: Flow[Any, Any], pairs: Iterable[str]) -> dict[str, Any]:
    """Keyword arguments for ``flow`` from ``NAME=VALUE`` texts; every problem names the fix."""
    params = flow.signature.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    hints = _annotations(flow)
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigurationError(
                f"--param takes NAME=VALUE, got {pair!r}; e.g. --param pages=20"
            )
        if name in kwargs:
            raise ConfigurationError(f"--param {name} is given twice; give each parameter once")
        if name not in params and not takes_any:
            raise ConfigurationError(
                f"flow {flow.name!r} has no parameter {name!r}; its parameters: "
                f"{_signature_text(flow)}"
            )
        kwargs[name] = convert_param(name, raw, hints.get(name, Any))
    missing = [
        p.name
        for p in params.values()
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in kwargs
    ]
    if missing:
        given = " ".join(f"--param {m}=..." for m in missing)
        raise ConfigurationError(
            f"flow {flow.name!r} needs {', '.join(map(repr, missing))}; give {given} "
            f"(its parameters: {_signature_text(flow)})"
        )
    return kwargs
