"""How a call goes to a worker and its result comes back: bytes, made and read here.

Both ends of the wire use this module (the engine's process packs calls and unpacks
results; a worker does the reverse), so the format lives in one place.

A call is one pickle of ``(task name, dask key, args, kwargs)``, made by the executor
rather than by dask, for two reasons: a value that cannot be pickled is found at once,
on the engine's side, and named in the error (which argument, of which task); and dask
sees one ``bytes`` argument, which it neither walks nor rewrites (dask replaces any
argument equal to a key of its graph with that key's value).

A result comes back **by value**, as msgpack (msgspec) when it can be: the same
encoding flowcore stores results in, decoded with the function's return annotation,
so what a flow gets from a task on Dask is what a cache hit or a resumed run of that
task would give it (``-> list[Item]`` gives ``Item`` objects; an unannotated tuple
comes back a list, as it would from the store). A value msgspec cannot encode (a
numpy array, a DataFrame, an arbitrary object) comes back pickled instead, unchanged;
whether the engine can then *store* it is the task's serializer's business, exactly
as for a local task. A value neither can encode is a :class:`ResultNotTransferable`
naming the task and the type.
"""

from __future__ import annotations

import pickle
from typing import Any, Final

import cloudpickle
import msgspec

from .errors import NotPicklable, ResultNotTransferable

__all__ = ["pack_call", "pack_result", "unpack_call", "unpack_result"]

_MSGPACK: Final = b"m"
_PICKLE: Final = b"p"
_PROTOCOL: Final = 5

_encoder = msgspec.msgpack.Encoder()
_plain = msgspec.msgpack.Decoder()


def pack_call(task: str, key: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """A call's arguments as bytes; :class:`NotPicklable` names the argument that is not.

    Plain pickle first (fast, and enough for data); cloudpickle when that fails (a
    lambda or a local function passed as an argument)."""
    call = (task, key, args, kwargs)
    try:
        return pickle.dumps(call, protocol=_PROTOCOL)
    except Exception:
        pass
    try:
        blob: bytes = cloudpickle.dumps(call, protocol=_PROTOCOL)
    except Exception as exc:
        raise NotPicklable(_unpicklable_argument(task, args, kwargs, exc)) from exc
    return blob


def unpack_call(blob: bytes) -> tuple[str, str, tuple[Any, ...], dict[str, Any]]:
    task, key, args, kwargs = pickle.loads(blob)
    return task, key, args, kwargs


def pack_result(value: Any, task: str) -> bytes:
    """``value`` as it travels back: msgpack when msgspec can encode it, else a pickle."""
    try:
        return _MSGPACK + _encoder.encode(value)
    except Exception:
        pass
    try:
        return _PICKLE + pickle.dumps(value, protocol=_PROTOCOL)
    except Exception:
        pass
    try:
        pickled: bytes = cloudpickle.dumps(value, protocol=_PROTOCOL)
    except Exception as exc:
        raise ResultNotTransferable(
            f"task {task!r} returned a {type(value).__qualname__}, which can be neither "
            f"msgpack-encoded nor pickled to bring it back from the Dask worker ({exc}); "
            "return data (builtins, dataclasses, msgspec Structs, or any picklable value) "
            "rather than live objects (clients, connections, open files, locks)"
        ) from exc
    return _PICKLE + pickled


def unpack_result(blob: bytes, decoder: msgspec.msgpack.Decoder[Any]) -> Any:
    """The value :func:`pack_result` packed, msgpack decoded with ``decoder`` (the
    function's return annotation); a value that does not fit it comes back as plain data,
    as flowcore's store gives it back."""
    kind, payload = blob[:1], memoryview(blob)[1:]
    if kind == _PICKLE:
        return pickle.loads(payload)
    if kind != _MSGPACK:
        raise ValueError(f"not a result of flowcore_dask (kind {kind!r})")
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError:
        return _plain.decode(payload)


def _unpicklable_argument(
    task: str, args: tuple[Any, ...], kwargs: dict[str, Any], exc: BaseException
) -> str:
    """Which argument of the call cannot be pickled, and what to do about it."""
    named: list[tuple[str, Any]] = [(f"argument {i + 1}", a) for i, a in enumerate(args)]
    named += [(f"argument {k!r}", v) for k, v in kwargs.items()]
    culprit = "an argument"
    for label, value in named:
        try:
            cloudpickle.dumps(value, protocol=_PROTOCOL)
        except Exception as own:
            culprit, exc = f"{label} (a {type(value).__qualname__})", own
            break
    return (
        f"{culprit} of task {task!r} cannot be pickled to send the call to the Dask cluster "
        f"({type(exc).__name__}: {exc}); pass data the task can rebuild what it needs from "
        "(a path, a URL, an id), and create clients, connections, locks and open files "
        "inside the task"
    )
