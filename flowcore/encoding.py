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

from .ids import safe_repr, safe_str, safe_text, type_name

__all__ = ["decode_inputs", "encode_inputs", "placeholder"]

#: Containers longer than this are recorded as a summary (type and length).
MAX_RECORDED_ITEMS = 1000
#: Strings and bytes longer than this are recorded truncated.
MAX_RECORDED_CHARS = 2048


def placeholder(kind: str, value: object, **extra: Any) -> dict[str, Any]:
    """A recorded stand-in for a value that is not recorded as itself."""
    out: dict[str, Any] = {"__flowcore__": kind, "type": type_name(value)}
    out.update(extra)
    return out


def _enc_hook(value: object) -> object:
    # Objects that know how to be recorded (task futures record the task run they stand for).
    record = getattr(type(value), "__flowcore_record__", None)
    if record is not None:
        return record(value)
    return placeholder("unencodable", value, repr=_repr(value))


def _repr(value: object) -> str:
    # Never raises (a broken __repr__, an int past the str() digit limit, a value
    # nested too deep), and always recordable (no lone surrogates).
    return safe_repr(value, 200)


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


def first_input_prefix(names: Sequence[str]) -> bytes | None:
    """The start of the encoded inputs of a call with one positional argument (a map
    of one entry, and the first parameter's name), for :func:`encode_inputs`."""
    if not names:
        return None
    return _encoder.encode({names[0]: None})[:-1]  # less the encoded None


def encode_inputs(
    names: Sequence[str],
    args: Sequence[object],
    kwargs: Mapping[str, object],
    one: bytes | None = None,
) -> bytes:
    """Encode a call's arguments as a msgpack map of parameter name to value.

    ``names`` are the function's positional parameter names; extra positional
    arguments (``*args``) are recorded under ``"*args"``. ``one``: the names'
    :func:`first_input_prefix`, which makes the commonest call (one number) cost a
    third of the general case: the same bytes, without building a dict.
    """
    if one is not None and len(args) == 1 and not kwargs and type(args[0]) in _SCALARS:
        try:
            return one + _encoder.encode(args[0])
        except OverflowError:
            pass  # an int beyond 64 bits: recorded as a placeholder, below
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
    except Exception:
        pass
    # A value msgspec refuses (an int beyond 64 bits, a dict keyed by tuples, a str
    # with lone surrogates, a list nested 100,000 deep): the others are recorded as
    # they are, and each such value as a placeholder. Names too may hold surrogates
    # (``**kwargs``).
    try:
        return _encoder.encode({safe_text(k): _encodable(v) for k, v in recorded.items()})
    except Exception as exc:  # e.g. a recursion inside a value's own hook
        return _encoder.encode({"__flowcore__": "unencodable", "error": _error(exc)})


def _encodable(value: object) -> object:
    try:
        _encoder.encode(value)
    except Exception as exc:
        return placeholder("unencodable", value, repr=_repr(value), error=_error(exc))
    return value


def _error(exc: Exception) -> str:
    return safe_str(exc)[:200]


def decode_inputs(data: bytes) -> Any:
    """Decode recorded inputs (or parameters); an empty record decodes to ``{}``."""
    if not data:
        return {}
    return _decoder.decode(data)
