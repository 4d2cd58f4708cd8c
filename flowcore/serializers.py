"""How task results are turned into bytes and back, safely.

A stored result starts with a small header: ``b"FCR"``, a format version, and
the serializer's one-letter code. The header is checked before any decoding,
so a truncated, tampered or foreign blob is recognised and refused, never
guessed at. Pickle, which executes code on load, is used only for tasks that
opted in with ``serializer="pickle"``, and a pickle found under a task that did
not opt in is refused without being loaded.

msgspec (msgpack) is the default: it round-trips builtins, bytes, datetimes,
UUIDs, dataclasses and msgspec Structs. Decoding uses the task's return
annotation, so a ``-> list[MyStruct]`` task gets ``MyStruct`` objects back,
not dicts.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any, Final

import msgspec

from .errors import ResultNotSerializable, ResultUnreadable

__all__ = [
    "SERIALIZERS",
    "ResultNotSerializable",
    "ResultUnreadable",
    "decode_result",
    "encode_result",
    "return_type",
]

MAGIC: Final = b"FCR"
FORMAT_VERSION: Final = 1
SERIALIZERS: Final = {"msgpack": b"m", "pickle": b"p"}
_NAMES: Final = {code: name for name, code in SERIALIZERS.items()}
_HEADERS: Final = {
    name: MAGIC + bytes((FORMAT_VERSION,)) + code for name, code in SERIALIZERS.items()
}


_encoder = msgspec.msgpack.Encoder()


def encode_result(value: Any, serializer: str, task_name: str) -> bytes:
    """The stored form of ``value``; raises :class:`ResultNotSerializable` naming the fix."""
    try:
        if serializer == "pickle":
            import pickle  # opted in to only (1 ms to import)

            payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        else:
            payload = _encoder.encode(value)
    except Exception as exc:
        hint = (
            "make it picklable"
            if serializer == "pickle"
            else "return builtins, bytes, datetimes, UUIDs, dataclasses or msgspec Structs; or "
            'opt in to pickle for this task with @flowcore.task(serializer="pickle")'
        )
        raise ResultNotSerializable(
            f"task {task_name!r} returned a {type(value).__qualname__} that the {serializer} "
            f"serializer cannot store ({exc}); {hint}; or turn storing off with "
            "persist_result=False (no caching, and resume will run it again)"
        ) from exc
    return _HEADERS[serializer] + payload


def decode_result(blob: bytes, *, allow_pickle: bool, type_: Any = Any) -> Any:
    """The value stored in ``blob``; raises :class:`ResultUnreadable` for anything off."""
    if len(blob) < 5 or blob[:3] != MAGIC:
        raise ResultUnreadable("not a flowcore result (bad header)")
    if blob[3] != FORMAT_VERSION:
        raise ResultUnreadable(f"result format version {blob[3]} is unknown to this flowcore")
    code = blob[4:5]
    name = _NAMES.get(code)
    if name is None:
        raise ResultUnreadable(f"unknown serializer code {code!r}")
    payload = blob[5:]
    if name == "pickle":
        if not allow_pickle:
            raise ResultUnreadable(
                "the stored result is a pickle, but this task did not opt in to pickle "
                '(serializer="pickle"); it was not loaded'
            )
        import pickle  # see encode_result

        try:
            return pickle.loads(payload)
        except Exception as exc:
            raise ResultUnreadable(f"corrupt pickle: {exc}") from exc
    try:
        return _decoder_for(type_).decode(payload)
    except msgspec.ValidationError:
        # The annotation does not describe what the function really returned;
        # the stored value is still good, so give it back as plain data.
        try:
            return msgspec.msgpack.decode(payload)
        except msgspec.DecodeError as exc:
            raise ResultUnreadable(f"corrupt msgpack: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ResultUnreadable(f"corrupt or truncated msgpack: {exc}") from exc


_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def _decoder_for(type_: Any) -> msgspec.msgpack.Decoder[Any]:
    try:
        return _decoders[type_]
    except (KeyError, TypeError):
        pass
    try:
        decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(type_)
    except TypeError:  # a type msgspec cannot decode into: give plain data back
        decoder = msgspec.msgpack.Decoder()
    try:
        _decoders[type_] = decoder
    except TypeError:  # unhashable annotation
        pass
    return decoder


def return_type(fn: Callable[..., Any]) -> Any:
    """The function's return annotation, or ``Any`` when there is none or it can't be resolved."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        return Any
    hint = hints.get("return", Any)
    return Any if hint is None or hint is type(None) else hint
