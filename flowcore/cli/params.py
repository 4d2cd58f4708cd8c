"""Flow parameters given on the command line: ``--param NAME=VALUE``.

Values are converted by the flow function's annotations with msgspec, so
``pages: int`` gets ``20``, not ``"20"``; lists, dicts and structs are given as
JSON (``--param ids='[1, 2]'``); unannotated values are JSON, else the text. A
parameter annotated ``flowcore.Secret[T]`` gets its value converted to ``T`` and
wrapped, so it is not recorded with the run's parameters.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterable
from typing import Any

import msgspec

from ..errors import ConfigurationError
from ..flow import Flow
from ..secret import Secret

__all__ = ["convert_param", "flow_kwargs"]


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
    if annotation is Secret or typing.get_origin(annotation) is Secret:
        inner = typing.get_args(annotation)
        kind = inner[0] if inner else str
        try:
            return Secret(convert_param(name, raw, kind))
        except ConfigurationError:
            raise ConfigurationError(  # without the value: it is a secret
                f"--param {name}: expected {_type_name(kind)} (a secret: the value given is "
                f"not shown); give a value of type {_type_name(kind)}"
            ) from None
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
