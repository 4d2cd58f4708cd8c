"""Encoding of recorded inputs and parameters.

Inputs are recorded for people to inspect, not to re-run from, so recording
must never fail a task and never cost more than the task: a value msgspec
cannot encode becomes a typed placeholder, and a huge value becomes a summary
instead of being copied into the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

__all__ = ["decode_inputs", "encode_inputs", "placeholder"]

#: Containers longer than this are recorded as a summary (type and length).
MAX_RECORDED_ITEMS = 1000
#: Strings and bytes longer than this are recorded truncated.
MAX_RECORDED_CHARS = 2048


def placeholder(kind: str, value: object, **extra: Any) -> dict[str, Any]:
    """A recorded stand-in for a value that is not recorded as itself."""
    out: dict[str, Any] = {"__flowcore__": kind, "type": _type_name(value)}
    out.update(extra)
    return out


def _type_name(value: object) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _enc_hook(value: object) -> object:
    # Objects that know how to be recorded (task futures record the task run they stand for).
    record = getattr(type(value), "__flowcore_record__", None)
    if record is not None:
        return record(value)
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not fail the task
        text = "<repr failed>"
    return placeholder("unencodable", value, repr=text[:200])


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_decoder = msgspec.msgpack.Decoder()


_CONTAINERS = (list, tuple, dict, set, frozenset)
_SCALARS = frozenset((int, float, bool, type(None)))


def _shrink(value: object) -> object:
    # Cheap checks only: this runs for every argument of every task call.
    if isinstance(value, str | bytes):
        if len(value) > MAX_RECORDED_CHARS:
            return placeholder("truncated", value, length=len(value), head=value[:200])
    elif isinstance(value, _CONTAINERS) and len(value) > MAX_RECORDED_ITEMS:
        return placeholder("summary", value, length=len(value))
    return value


def encode_inputs(
    names: Sequence[str], args: Sequence[object], kwargs: Mapping[str, object]
) -> bytes:
    """Encode a call's arguments as a msgpack map of parameter name to value.

    ``names`` are the function's positional parameter names; extra positional
    arguments (``*args``) are recorded under ``"*args"``.
    """
    recorded: dict[str, object] = {}
    n = len(names)
    for i, value in enumerate(args):
        if type(value) not in _SCALARS:  # numbers are recorded as they are: most inputs
            value = _shrink(value)
        if i < n:
            recorded[names[i]] = value
        else:
            recorded.setdefault("*args", []).append(value)  # type: ignore[attr-defined]
    for key, value in kwargs.items():
        recorded[key] = value if type(value) in _SCALARS else _shrink(value)
    try:
        return _encoder.encode(recorded)
    except Exception as exc:  # e.g. a dict with unhashable-as-key values, or a recursion
        return _encoder.encode({"__flowcore__": "unencodable", "error": str(exc)[:200]})


def decode_inputs(data: bytes) -> Any:
    """Decode recorded inputs (or parameters); an empty record decodes to ``{}``."""
    if not data:
        return {}
    return _decoder.decode(data)
