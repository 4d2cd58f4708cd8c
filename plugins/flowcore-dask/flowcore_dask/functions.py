"""A task function made ready for the cluster, once per function (not per call).

``@flowcore.task`` leaves the module attribute pointing at the Task, not at the plain
function the engine calls, so pickle cannot send the function by reference
(``module.name`` is something else); cloudpickle sends it by value: its code, and the
globals it reads (modules and importable functions by reference, so the workers need
the same code installed). Pickling that on every call would cost more than the rest of
the call's preparation, so it is done once per function here, and a worker loads it
once per function too (the token names it; see :mod:`.worker`).

The function sent is the user's own, without the wrapper ``log_prints`` puts around it
(it reads the engine's context, which the worker does not have, and cannot be pickled):
on a worker, ``print`` writes to the worker's output, not to the run's log.

The return annotation is resolved here too: results coming back are decoded with it
(:mod:`.transfer`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import cloudpickle
import msgspec

from flowcore.engine.logs import unwrapped
from flowcore.serializers import return_type

from .errors import NotPicklable

__all__ = ["Prepared", "prepare"]


class Prepared:
    """A function as calls send it: its pickle, the token workers cache it under, and the
    decoder of its results."""

    __slots__ = ("blob", "decoder", "name", "token")

    def __init__(self, name: str, blob: bytes, decoder: msgspec.msgpack.Decoder[Any]) -> None:
        #: The function's own name (a call is named after its task: see the executor).
        self.name = name
        self.blob = blob
        self.token = hashlib.blake2b(blob, digest_size=16).hexdigest()
        self.decoder = decoder


def prepare(fn: Callable[..., Any], task: str) -> Prepared:
    """``fn`` ready to send; :class:`NotPicklable` names the task and the fix."""
    fn = unwrapped(fn)
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    try:
        blob: bytes = cloudpickle.dumps(fn, protocol=5)
    except Exception as exc:
        raise NotPicklable(
            f"the function {name} of task {task!r} cannot be pickled to send it to the Dask "
            f"cluster ({type(exc).__name__}: {exc}); define it at module level (not inside "
            "another function), and create what it uses that cannot be pickled (locks, open "
            "files, clients, connections) inside it, rather than in variables it closes "
            "over or module globals it reads"
        ) from exc
    try:
        decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(return_type(fn))
    except TypeError:  # an annotation msgspec cannot decode into: plain data back
        decoder = msgspec.msgpack.Decoder()
    return Prepared(name, blob, decoder)
