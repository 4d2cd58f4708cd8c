"""A value flowcore passes along but never records: ``flowcore.Secret``.

A password, a token or an API key given to a task or a flow would otherwise be
recorded with its inputs or parameters (msgpack in the store, for everyone who
can read the database) and, with ``Tracing(parameters=True)``, put on a span.
Wrapped in a :class:`Secret`, it is passed to the function as the wrapper, and
read with ``.get()`` where it is used::

    @flowcore.task
    async def fetch(url: str, token: flowcore.Secret[str]) -> bytes:
        headers = {"Authorization": f"Bearer {token.get()}"}
        ...

    await fetch(url, flowcore.Secret(os.environ["API_TOKEN"]))

A flow parameter annotated ``Secret[T]`` given a plain value gets it converted to
``T`` and wrapped before anything is recorded (``flowcore run --param token=...``
too); a task's argument must be wrapped by its caller.
"""

from __future__ import annotations

import copy
from typing import Any, Generic, NoReturn, TypeVar

import msgspec

__all__ = ["Secret"]

T = TypeVar("T")

_MASK = "Secret('****')"
#: What a Secret is recorded as, in inputs and parameters: that there was one, no more
#: (with a ``type``, as every recorded stand-in has, which messages about it quote).
_RECORDED = {"__flowcore__": "secret", "type": "flowcore.Secret"}
#: The same canonical encoding cache keys use (sorted keys), so equal values hash equal.
_canonical = msgspec.msgpack.Encoder(order="deterministic")
_DIGEST_PREFIX = b"flowcore-secret-v1\0"


class Secret(Generic[T]):
    """A value that is passed along but never recorded, shown or pickled.

    - ``.get()`` returns the value; ``repr`` and ``str`` show ``Secret('****')``, so
      a span's parameter values, a log line or a traceback's locals do not show it.
    - Recorded inputs and flow parameters hold ``{"__flowcore__": "secret", "type":
      "flowcore.Secret"}``: the value never reaches the store. So a run whose *flow
      parameters* held one cannot be resumed (the secret was not recorded):
      ``flowcore.resume`` refuses, and the flow is called again with the secret instead.
    - As an argument of a cached task, it is part of the cache key as a SHA-256
      digest of its value: calls with different secrets never share an entry, and
      the store holds no secret. A digest is not the secret, but anyone who can read
      the store and knows the task's source and its other arguments can test guesses
      of a weak secret (a short password) against the key; for those, leave the
      argument out of the key (``CachePolicy.from_inputs(exclude=[...])``) only when
      the result does not depend on it, or do not cache the task.
    - Equal (and hashing equal) when the values are; strings and bytes are compared
      in constant time.
    - Not picklable: a pickled result, or a pickled argument sent to another
      process, would write the secret out. Copying works.
    """

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def get(self) -> T:
        """The secret value itself."""
        return self._value

    def __repr__(self) -> str:
        return _MASK

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        mine: Any = self._value
        theirs: Any = other._value
        # Imported at the first comparison: hmac imports hashlib, which `import flowcore`
        # does not (OpenSSL's library is a good part of a millisecond to load; issue 17).
        import hmac

        if isinstance(mine, str) and isinstance(theirs, str):
            return hmac.compare_digest(_utf8(mine), _utf8(theirs))
        if isinstance(mine, bytes) and isinstance(theirs, bytes):
            return hmac.compare_digest(mine, theirs)
        return bool(mine == theirs)

    def __hash__(self) -> int:
        return hash(self._value)

    def __copy__(self) -> Secret[T]:
        return Secret(self._value)

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret[T]:
        return Secret(copy.deepcopy(self._value, memo))

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError(
            "a flowcore.Secret cannot be pickled: that would write the secret out (a pickled "
            "task result, an argument sent to another process); pass it where it is needed, "
            "or pickle secret.get() on purpose"
        )

    def __reduce__(self) -> NoReturn:
        self.__reduce_ex__(None)

    # -- how flowcore records it and keys on it --------------------------------------------

    def __flowcore_record__(self) -> dict[str, str]:
        """What recorded inputs and parameters hold instead of the value."""
        return dict(_RECORDED)

    def __flowcore_cache_key__(self) -> dict[str, str]:
        """What a cache key is computed over instead of the value: a SHA-256 digest of
        its canonical encoding (equal values, equal digests; the store never sees it)."""
        try:
            encoded = _canonical.encode(self._value)
        except (TypeError, ValueError, OverflowError, RecursionError):
            # Not the value's own message: it could quote the secret.
            raise TypeError(
                f"a Secret holding a {type(self._value).__qualname__} has no stable encoding "
                "to key a cache on"
            ) from None
        import hashlib  # imported by the first key (`import flowcore` does not hash)

        digest = hashlib.sha256(_DIGEST_PREFIX + encoded).hexdigest()
        return {"__flowcore__": "secret", "sha256": digest}


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")
