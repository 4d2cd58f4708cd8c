"""Encoding of recorded inputs and parameters.

Inputs are recorded for people to inspect, not to re-run from, so recording
must never fail a task and never cost more than the task: a value msgspec
cannot encode becomes a typed placeholder, and a huge value becomes a summary
instead of being copied into the store.

Resume matches a call to the earlier run's by its recorded inputs, which is
right only while they hold the arguments in full. So recording notes when it
shortened a value or put a stand-in in its place, and then (or when a task
records no inputs) gives the call an identity of its own: a hash of the
canonical encoding of its complete arguments (:func:`record_call`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec

from .ids import safe_repr, safe_str, safe_text, type_name

__all__ = [
    "UNHASHABLE",
    "call_identity",
    "decode_inputs",
    "encode_inputs",
    "placeholder",
    "record_call",
]

#: Containers longer than this are recorded as a summary (type and length).
MAX_RECORDED_ITEMS = 1000
#: Strings and bytes longer than this are recorded truncated.
MAX_RECORDED_CHARS = 2048


def placeholder(kind: str, value: object, **extra: Any) -> dict[str, Any]:
    """A recorded stand-in for a value that is not recorded as itself."""
    out: dict[str, Any] = {"__flowcore__": kind, "type": type_name(value)}
    out.update(extra)
    return out


#: How many stand-ins losing something of their value (a truncated string, a summarised
#: container, an unencodable object, a Secret) recording has made: :func:`record_call`
#: compares it before and after (two reads; a search of the encoded bytes would cost a
#: quarter of the encoding). Task calls are recorded on the event loop's thread; another
#: thread recording at the same time can make a call look lossy (a hash computed for
#: nothing), and only a lost update between two others could hide a stand-in.
_lossy_stand_ins = 0


def _enc_hook(value: object) -> object:
    global _lossy_stand_ins
    # Objects that know how to be recorded (task futures record the task run they stand for).
    record = getattr(type(value), "__flowcore_record__", None)
    if record is not None:
        recorded = record(value)
        if type(recorded) is dict and recorded.get("__flowcore__") != "future":
            _lossy_stand_ins += 1  # a Secret: recorded without its value
        return recorded
    _lossy_stand_ins += 1
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
    global _lossy_stand_ins
    if isinstance(value, str | bytes):
        if len(value) > MAX_RECORDED_CHARS:
            _lossy_stand_ins += 1
            return placeholder("truncated", value, length=len(value), head=value[:200])
    elif isinstance(value, _CONTAINERS) and len(value) > MAX_RECORDED_ITEMS:
        _lossy_stand_ins += 1
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
    return record_call(names, args, kwargs, one, identify=False)[0]


def record_call(
    names: Sequence[str],
    args: Sequence[object],
    kwargs: Mapping[str, object],
    one: bytes | None = None,
    *,
    identify: bool = True,
) -> tuple[bytes, str | None]:
    """A task call's recorded inputs (see :func:`encode_inputs`) and its identity.

    The identity is what resume matches the call on (see :func:`call_identity`):
    ``None`` when the recorded inputs hold every argument as it was, so they are
    the identity themselves (the common case, which costs two reads of a counter);
    a hash of the complete arguments when recording shortened a value or put a
    stand-in in its place (a long string, a big container, an object msgspec
    cannot encode, a ``flowcore.Secret``), since two different calls could then
    record the same. (A future is recorded as the task run it stands for, in full.)
    ``identify=False``: the inputs only (the identity is ``None``).
    """
    if one is not None and len(args) == 1 and not kwargs and type(args[0]) in _SCALARS:
        try:
            return one + _encoder.encode(args[0]), None
        except OverflowError:
            pass  # an int beyond 64 bits: recorded as a placeholder, below
    before = _lossy_stand_ins  # each stand-in that loses something counts itself
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
        data = _encoder.encode(recorded)
    except Exception:
        data = _encode_refused(recorded)
    if _lossy_stand_ins == before or not identify:
        return data, None
    return data, call_identity(names, args, kwargs)


def _encode_refused(recorded: dict[str, object]) -> bytes:
    """The recorded inputs when msgspec refused a value (an int beyond 64 bits, a dict
    keyed by tuples, a str with lone surrogates, a list nested 100,000 deep): the
    others are recorded as they are, and each such value as a placeholder. Names too
    may hold surrogates (``**kwargs``)."""
    global _lossy_stand_ins
    _lossy_stand_ins += 1
    try:
        return _encoder.encode({safe_text(k): _encodable(v) for k, v in recorded.items()})
    except Exception as exc:  # e.g. a recursion inside a value's own hook
        return _encoder.encode({"__flowcore__": "unencodable", "error": _error(exc)})


#: The identity of a call whose arguments have no stable encoding: it is never replayed.
UNHASHABLE: Final = "unhashable"
_IDENTITY_PREFIX = b"flowcore-call-v1\0"


def _identity_part(value: Any) -> Any:
    """What a value msgspec cannot encode contributes to a call's identity.

    A ``flowcore.Secret``: a digest of its value (as in a cache key; never the value).
    A future: the task run it stands for, while that is known. Anything else has no
    stable encoding, and the call has no identity.
    """
    keyed = getattr(type(value), "__flowcore_cache_key__", None)
    if keyed is not None:
        return keyed(value)
    recorded = getattr(type(value), "__flowcore_record__", None)
    if recorded is not None:
        part = recorded(value)
        if isinstance(part, dict) and isinstance(part.get("seq"), int) and part["seq"] < 0:
            # A call of a map not started yet: its seq is not known, so it names nothing.
            raise TypeError("a future whose task run has no seq yet")
        return part
    raise TypeError(f"Encoding objects of type {type(value).__qualname__} is unsupported")


_canonical = msgspec.msgpack.Encoder(order="deterministic", enc_hook=_identity_part)


def call_identity(
    names: Sequence[str], args: Sequence[object], kwargs: Mapping[str, object]
) -> str:
    """A call's full-fidelity identity: SHA-256 (hex) of the canonical msgpack encoding of
    all its arguments, whole (mapped to names as :func:`encode_inputs` maps them; sorted
    keys, so the order keyword arguments were given in does not matter), or
    :data:`UNHASHABLE` when an argument has no stable encoding.

    Costs an encoding of every argument in full: it is computed only for calls whose
    recorded inputs do not say them in full (see :func:`record_call`), or of tasks
    that record no inputs.
    """
    arguments: dict[str, object] = {}
    n = len(names)
    for i, value in enumerate(args):
        if i < n:
            arguments[names[i]] = value
        else:
            arguments.setdefault("*args", []).append(value)  # type: ignore[attr-defined]
    arguments.update(kwargs)
    try:
        encoded = _canonical.encode(arguments)
    except Exception:  # no stable encoding (an object, an int past 64 bits, a cycle)
        return UNHASHABLE
    # Imported at the first call: `import flowcore` does not hash, and loading OpenSSL's
    # library for hashlib is a good part of a millisecond (issue 17).
    import hashlib

    return hashlib.sha256(_IDENTITY_PREFIX + encoded).hexdigest()


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
