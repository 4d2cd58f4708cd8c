"""Cache policies and cache keys.

A cache key says "this call would compute the same value as that earlier one".
It is a SHA-256 over parts chosen by the policy:

- the task's identity (module and qualified name: two tasks never share
  entries, even with identical source),
- ``source``: a fingerprint of the function's source code, so editing the
  task invalidates its entries,
- ``inputs``: a canonical msgpack encoding of the bound arguments (defaults
  applied, dict keys sorted), minus ``exclude``-d ones,
- ``key``: a user function of the bound arguments, returning a string.

Keys are stable across processes and Python restarts: no ``hash()``, no ``id()``,
no repr of objects. An argument msgspec cannot encode is an error naming the
argument and the fix, never a silent wrong hit.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ._validate import seconds
from .errors import CacheKeyError, ConfigurationError

__all__ = ["CacheKeyError", "CachePolicy", "KeyMaker"]


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """What makes two calls of a task "the same" for caching, and for how long.

    ``CachePolicy()`` (or ``cache=True``) keys on inputs and source code.
    Policies compose with ``+``. ``ttl``: seconds an entry stays valid
    (``None``: forever). ``refresh=True``: always recompute and overwrite the entry.

    >>> policy = CachePolicy.from_inputs(exclude=["client"]) + CachePolicy.from_source()
    >>> policy.inputs, policy.source, sorted(policy.exclude)
    (True, True, ['client'])
    >>> CachePolicy(ttl=3600).ttl
    3600
    """

    inputs: bool = True
    source: bool = True
    exclude: frozenset[str] = field(default_factory=frozenset)
    key: Callable[[Mapping[str, Any]], str] | None = None
    ttl: float | None = None
    refresh: bool = False

    def __post_init__(self) -> None:
        problems = []
        exclude: object = self.exclude
        if isinstance(exclude, str):
            problems.append(f"`exclude` must be a list of argument names, got {exclude!r}")
        else:
            object.__setattr__(self, "exclude", frozenset(self.exclude))
        key: object = self.key
        if key is not None and not callable(key):
            problems.append(f"`key` must be a function (arguments) -> str, got {self.key!r}")
        if problem := seconds("ttl", self.ttl):
            problems.append(problem)
        if not (self.inputs or self.source or self.key):
            problems.append("a cache policy needs at least one of inputs, source or key")
        if problems:
            raise ConfigurationError("invalid cache policy: " + "; ".join(problems))

    # -- the named parts, to compose ---------------------------------------------------

    @staticmethod
    def from_inputs(exclude: Iterable[str] = ()) -> CachePolicy:
        """Key on the call's arguments (all but ``exclude``)."""
        return CachePolicy(inputs=True, source=False, exclude=frozenset(exclude))

    @staticmethod
    def from_source() -> CachePolicy:
        """Key on the task's source code."""
        return CachePolicy(inputs=False, source=True)

    @staticmethod
    def from_key(fn: Callable[[Mapping[str, Any]], str]) -> CachePolicy:
        """Key on ``fn(arguments)``, a string the user computes."""
        return CachePolicy(inputs=False, source=False, key=fn)

    def __add__(self, other: CachePolicy) -> CachePolicy:
        if not isinstance(other, CachePolicy):
            return NotImplemented
        if self.key is not None and other.key is not None and self.key is not other.key:
            raise ConfigurationError("cannot add two cache policies with different `key` functions")
        ttls = [t for t in (self.ttl, other.ttl) if t is not None]
        # An argument stays out of the key only if every part keying on inputs leaves it out.
        if self.inputs and other.inputs:
            exclude = self.exclude & other.exclude
        else:
            exclude = self.exclude if self.inputs else other.exclude
        return CachePolicy(
            inputs=self.inputs or other.inputs,
            source=self.source or other.source,
            exclude=exclude,
            key=self.key or other.key,
            ttl=min(ttls) if ttls else None,
            refresh=self.refresh or other.refresh,
        )

    def with_ttl(self, ttl: float | None) -> CachePolicy:
        return CachePolicy(self.inputs, self.source, self.exclude, self.key, ttl, self.refresh)

    def with_refresh(self, refresh: bool = True) -> CachePolicy:
        return CachePolicy(self.inputs, self.source, self.exclude, self.key, self.ttl, refresh)


def resolve_policy(cache: object, ttl: object) -> CachePolicy | None:
    """Turn the ``cache=``/``cache_ttl=`` options into a policy (or ``None``: no caching)."""
    if cache is None or cache is False:
        if ttl is not None:
            raise ConfigurationError("`cache_ttl` was given without `cache`; add cache=True")
        return None
    if cache is True:
        policy = CachePolicy()
    elif isinstance(cache, CachePolicy):
        policy = cache
    else:
        raise ConfigurationError(
            f"`cache` must be True, False or a flowcore.CachePolicy, got {cache!r}"
        )
    if ttl is not None:
        policy = policy.with_ttl(ttl)  # type: ignore[arg-type]  # validated by the policy
    return policy


def task_identity(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def source_fingerprint(fn: Callable[..., Any]) -> str:
    """A hash of the function's source, or of its bytecode when the source is unavailable."""
    try:
        text = inspect.getsource(fn).encode()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        text = code.co_code + repr(code.co_consts).encode() if code is not None else b""
    import hashlib  # at the first cached task: `import flowcore` does not hash (issue 17)

    return hashlib.sha256(text).hexdigest()


def _key_part(value: Any) -> Any:
    """What a value that msgspec cannot encode contributes to a key, when it says so.

    A value whose type has ``__flowcore_cache_key__`` (``flowcore.Secret``: a digest
    of the secret, never the secret) is keyed on what that returns; anything else
    stays an error, so a key is never silently built without an argument.
    """
    part = getattr(type(value), "__flowcore_cache_key__", None)
    if part is None:
        raise TypeError(f"Encoding objects of type {type(value).__qualname__} is unsupported")
    return part(value)


_canonical = msgspec.msgpack.Encoder(order="deterministic", enc_hook=_key_part)


class KeyMaker:
    """Computes cache keys for one task; built once per task, used per call."""

    __slots__ = (
        "_defaults",
        "_every",
        "_names",
        "_one",
        "_policy",
        "_positional",
        "_prefix",
        "_signature",
        "_simple",
        "task_name",
    )

    def __init__(self, fn: Callable[..., Any], task_name: str, policy: CachePolicy) -> None:
        self.task_name = task_name
        self._policy = policy
        self._signature = inspect.signature(fn)
        unknown = policy.exclude - set(self._signature.parameters)
        if unknown:
            raise ConfigurationError(
                f"cache policy of task {task_name!r} excludes {sorted(unknown)}, which are not "
                f"parameters of {task_name}{self._signature}"
            )
        # The task's name too: one function wrapped as two tasks gives two tasks.
        identity = f"{task_identity(fn)}\0{task_name}"
        source = source_fingerprint(fn) if policy.source else ""
        self._prefix = f"flowcore-cache-v1\0{identity}\0{source}\0".encode()
        params = list(self._signature.parameters.values())
        # Calls binding only plain parameters can skip inspect's (slow) bind().
        self._simple = all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params)
        self._names = tuple(p.name for p in params)
        #: How many parameters can be given positionally (keyword-only ones come last).
        self._positional = sum(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        self._defaults = {p.name: p.default for p in params if p.default is not p.empty}
        #: How many arguments a call gives when it gives every parameter positionally
        #: (-1: never keyed that way). Such a call of a task keyed on its inputs alone
        #: (and source) is keyed on ``{name: value, ...}`` as given: no binding, no
        #: defaults, no exclusions: a key in half the time of the general path.
        plain = policy.inputs and not policy.exclude and policy.key is None
        self._every = len(params) if plain and self._positional == len(params) else -1
        #: The canonical encoding of a one-parameter call, less its value: the same bytes
        #: as encoding ``{name: value}`` (a map of one entry has one order).
        self._one = _canonical.encode({params[0].name: None})[:-1] if len(params) == 1 else b""

    def _arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The bound arguments, defaults applied, in the signature's order (as
        ``inspect.Signature.bind`` gives them: a key function sees one order however
        the call was spelled)."""
        names = self._names
        n = len(args)
        if self._simple and n <= self._positional:
            arguments = dict(zip(names, args, strict=False))
            if n == len(names):
                return arguments if not kwargs else self._bind(args, kwargs)
            if kwargs and any(k in arguments or k not in names for k in kwargs):
                return self._bind(args, kwargs)  # a duplicate or unknown name: bind() says
            defaults = self._defaults
            for name in names[n:]:
                if name in kwargs:
                    arguments[name] = kwargs[name]
                elif name in defaults:
                    arguments[name] = defaults[name]
                else:
                    return self._bind(args, kwargs)  # let bind() raise its error
            return arguments
        return self._bind(args, kwargs)

    def _bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def key(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        import hashlib  # imported by the first key (`import flowcore` does not hash)

        if not kwargs and len(args) == self._every:
            # Every parameter given positionally: the key of the general path below,
            # in fewer steps. A value msgspec refuses takes the general path, which
            # encodes what it can (text with lone surrogates) and names what it cannot.
            try:
                data = (
                    self._one + _canonical.encode(args[0])
                    if self._one
                    else _canonical.encode(dict(zip(self._names, args, strict=True)))
                )
            except _UNENCODABLE:
                pass
            else:
                return hashlib.sha256(self._prefix + data).hexdigest()
        policy = self._policy
        h = hashlib.sha256(self._prefix)
        if policy.inputs or policy.key is not None:
            arguments = self._arguments(args, kwargs)
            if policy.inputs:
                keyed = (
                    {k: v for k, v in arguments.items() if k not in policy.exclude}
                    if policy.exclude
                    else arguments
                )
                try:
                    h.update(_canonical.encode(keyed))  # sorted keys: order-independent
                except _UNENCODABLE:
                    h.update(self._encode_each(keyed))
            if policy.key is not None:
                user_key = policy.key(arguments)
                if not isinstance(user_key, str):
                    raise CacheKeyError(
                        f"the cache key function of task {self.task_name!r} must return a str, "
                        f"got {type(user_key).__name__}"
                    )
                # surrogatepass: the same bytes as UTF-8 for any valid text, and a key
                # made of a file name that is not UTF-8 (os.fsdecode) is still a key.
                h.update(b"\0key=" + user_key.encode("utf-8", "surrogatepass"))
        return h.hexdigest()

    def _encode_each(self, keyed: Mapping[str, Any]) -> bytes:
        """The canonical encoding of arguments msgspec refused as they were: text with
        lone surrogates (a file name from ``os.fsdecode``) is encoded as an extension
        type, which no plain string encodes to, so keys stay distinct and stable;
        anything else that cannot be encoded raises :class:`CacheKeyError` naming it."""
        stable = {}
        for name, value in keyed.items():
            try:
                _canonical.encode(value)
            except _UNENCODABLE:
                value = _with_surrogates(value, 0)
                self._encode(name, value)  # raises, naming the argument, if still refused
            stable[name] = value
        return _canonical.encode(stable)

    def _encode(self, name: str, value: Any) -> bytes:
        try:
            return _canonical.encode(value)
        except _UNENCODABLE as exc:
            reason = (
                "nested too deeply to encode"
                if isinstance(exc, RecursionError)
                else f"which has no stable encoding ({exc})"
            )
            raise CacheKeyError(
                f"cannot compute the cache key of task {self.task_name!r}: argument {name!r} "
                f"is a {type(value).__qualname__}, {reason}. "
                f"Leave it out of the key with cache=CachePolicy.from_inputs(exclude=[{name!r}]) "
                "+ CachePolicy.from_source(), or give a key function: "
                "CachePolicy.from_key(lambda args: ...)"
            ) from exc


#: What msgspec raises for a value it cannot encode: RecursionError for a value nested
#: deeper than the interpreter's recursion limit.
_UNENCODABLE = (TypeError, ValueError, OverflowError, RecursionError)
#: The extension type code of text holding lone surrogates, in a cache key.
_SURROGATE_TEXT = 1


def _with_surrogates(value: Any, depth: int) -> Any:
    """``value`` with each str holding lone surrogates replaced by an extension value of
    its ``surrogatepass`` bytes (in lists, tuples and dict values); the rest unchanged."""
    if depth > 64:
        return value
    t = type(value)
    if t is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return msgspec.msgpack.Ext(_SURROGATE_TEXT, value.encode("utf-8", "surrogatepass"))
        return value
    if t is list or t is tuple:
        return [_with_surrogates(v, depth + 1) for v in value]
    if t is dict:
        return {k: _with_surrogates(v, depth + 1) for k, v in value.items()}
    return value
