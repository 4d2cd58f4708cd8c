"""Flow parameters given on the command line: ``--param NAME=VALUE`` and ``--params-json``.

A ``--param`` value is text, read by the flow's annotation: text the annotation
takes as it is (``pages: int`` gets ``20`` from ``20``, ``day: date`` a date) is
converted so; other values are read as JSON (lists, dicts and structs:
``--param ids='[1, 2]'``), else kept as the text. ``--params-json '{"pages": 20}'``
(or ``@file.json``) gives parameters as a JSON object. Either way the values then go
through the flow's own check (:meth:`flowcore.Flow.validate`), the same as a Python
call's: a value that does not fit, a missing or an unknown parameter make a run
recorded Failed with one ``ParameterError`` listing them all. A parameter annotated
``flowcore.Secret[T]`` gets its value converted to ``T`` and wrapped, so it is not
recorded with the run's parameters.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from ..errors import ConfigurationError
from ..flow import Flow, convert_parameter
from ..secret import Secret

__all__ = ["convert_param", "flow_kwargs", "params_from_json"]


def _secret_type(annotation: Any) -> Any | None:
    """``T`` for a ``Secret[T]`` (or ``Secret[T] | None``) annotation, else ``None``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        others = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = others[0] if len(others) == 1 else None
    if annotation is Secret:
        return Any
    if typing.get_origin(annotation) is Secret:
        args = typing.get_args(annotation)
        return args[0] if args else Any
    return None


def _json_or_text(raw: str) -> Any:
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return raw


def convert_param(raw: str, annotation: Any, *, wrap_secret: bool = True) -> Any:
    """A ``--param`` value for a parameter annotated ``annotation``: converted from
    the text when the annotation takes text (``20`` for ``int``), else decoded as JSON
    (``[1, 2]``), else the text itself; the flow's check then says whether it fits.
    For ``Secret[T]``: the value converted to ``T`` and wrapped (when it does not
    convert, the text, which the flow's check refuses without showing it; wrapped
    all the same with ``wrap_secret``, for a flow that does not check)."""
    inner = _secret_type(annotation)
    if inner is not None:
        value = convert_param(raw, inner, wrap_secret=False)
        if inner is Any:
            return Secret(value)
        try:
            return Secret(convert_parameter(value, inner))
        except Exception:
            return Secret(raw) if wrap_secret else raw
    if annotation is Any:
        return _json_or_text(raw)
    try:
        return convert_parameter(raw, annotation)
    except Exception:
        return _json_or_text(raw)  # e.g. a list: --param ids='[1, 2]'


def params_from_json(text: str) -> dict[str, Any]:
    """The parameters ``--params-json`` gives: a JSON object, or ``@FILE`` holding one."""
    source = "--params-json"
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        source = f"--params-json {text}"
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(
                f"{source}: cannot read {path} ({exc.__class__.__name__}: {exc}); give a JSON "
                "file's path after @, or the JSON itself"
            ) from None
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise ConfigurationError(
            f"{source}: not valid JSON ({exc}); give an object, e.g. --params-json "
            "'{\"pages\": 20}'"
        ) from None
    if not isinstance(value, dict):
        raise ConfigurationError(
            f"{source}: expected a JSON object of parameters, got {type(value).__name__}; "
            "e.g. --params-json '{\"pages\": 20}'"
        )
    return value


def flow_kwargs(
    flow: Flow[Any, Any], pairs: Iterable[str], params_json: str | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``flow`` from ``NAME=VALUE`` texts and a ``--params-json``
    object. Only how they are written is checked here (every problem names the fix);
    whether they fit the flow is checked when it is called, as any call is."""
    kwargs = params_from_json(params_json) if params_json is not None else {}
    from_json = set(kwargs)
    types = flow.parameter_types()
    signature = flow.signature.parameters
    rest = next((p.name for p in signature.values() if p.kind is p.VAR_KEYWORD), None)
    seen: set[str] = set()
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigurationError(
                f"--param takes NAME=VALUE, got {pair!r}; e.g. --param pages=20"
            )
        if name in seen:
            raise ConfigurationError(f"--param {name} is given twice; give each parameter once")
        if name in from_json:
            raise ConfigurationError(
                f"parameter {name!r} is given by --param and by --params-json; give it once"
            )
        seen.add(name)
        known = name in signature and signature[name].kind in (
            signature[name].POSITIONAL_OR_KEYWORD,
            signature[name].KEYWORD_ONLY,
        )
        annotation = types[name] if known else types[rest] if rest is not None else Any
        kwargs[name] = convert_param(raw, annotation, wrap_secret=not flow.validate_parameters)
    if not flow.validate_parameters:  # passed as given: a secret is still never recorded
        for name, value in kwargs.items():
            secret = name in from_json and name in types and _secret_type(types[name]) is not None
            if secret and value is not None and not isinstance(value, Secret):
                kwargs[name] = Secret(value)
    return kwargs
