"""Finding a flow again: from ``path/to/file.py:flow_name``, or from a run's entrypoint.

The file is imported as a module of its own, under a name made from its
resolved path, so two files called ``flows.py`` never shadow each other and
nothing the user has installed under the same name is picked up instead. The
name is the same every time the same file is loaded, in every process: a
task's cache key includes its module's name (and a pickled result names the
module of its class), so a name that changed per load would make each
``flowcore run`` miss the cache of the one before. Its folder goes first on
``sys.path``, as when the file is run as a script, so its sibling imports
(``from helpers import ...``) work.

A run records where its flow came from (:attr:`flowcore.Flow.entrypoint`):
``module:qualname``, or ``file.py:qualname`` for scripts; :func:`load_entrypoint`
finds the flow there again to resume the run.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import ConfigurationError, FlowLoadError
from .flow import Flow
from .task import Task

__all__ = [
    "flows_in",
    "load_entrypoint",
    "load_flow",
    "load_module",
    "source_to_load",
    "split_target",
]


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


def source_to_load(entrypoint: str) -> Path | None:
    """The source file loading an entrypoint would run, found without running it: a
    script (loaded afresh each time), or a module not imported yet (its parent
    packages are imported to find it). ``None`` when loading runs no file (the module
    is imported already: its flow's own hash says what code it is) or when the file
    cannot be found (:func:`load_entrypoint` then says why)."""
    where = entrypoint.rpartition(":")[0]
    if where.endswith(".py"):
        return Path(where)
    if where in sys.modules:
        return None
    _import_from_cwd()
    try:
        spec = importlib.util.find_spec(where)
    except (ImportError, ValueError):
        return None
    origin = spec.origin if spec is not None and spec.has_location else None
    return Path(origin) if origin else None


def _import_from_cwd() -> None:
    """Let modules of the current folder be imported, as ``python -c`` would (a console
    script such as ``flowcore`` does not put it on ``sys.path``)."""
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))


def load_entrypoint(entrypoint: str) -> Flow[Any, Any]:
    """Import the flow an entrypoint names (see :attr:`flowcore.Flow.entrypoint`)."""
    where, _, qualname = entrypoint.rpartition(":")
    if where.endswith(".py"):
        flow_obj: object = load_flow(f"{where}:{qualname}")
    else:
        _import_from_cwd()
        try:
            flow_obj = importlib.import_module(where)
        except ImportError as exc:
            raise ConfigurationError(
                f"cannot import module {where!r} of flow {entrypoint!r} to resume it ({exc}); "
                "run `flowcore resume` from the folder you ran the flow from, or pass the flow: "
                "flowcore.resume(run_id, flow=my_flow)"
            ) from exc
        for part in qualname.split("."):
            flow_obj = getattr(flow_obj, part, None)
    if not isinstance(flow_obj, Flow):
        raise ConfigurationError(
            f"{entrypoint!r} is no longer a @flowcore.flow; pass the flow to resume: "
            "flowcore.resume(run_id, flow=my_flow)"
        )
    return flow_obj
