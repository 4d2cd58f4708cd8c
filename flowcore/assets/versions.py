"""Versions: of code (what computes an asset) and of data (what it computed).

**Code version.** By default a fingerprint of the function's own source: the
syntax tree of its ``def`` without its decorators, its name and its docstring,
so editing comments, blank lines or formatting, moving the function in its file,
moving the file, or changing a decorator's options (retries, timeout) does not
make the asset stale, and changing what the function computes does. It is the
same in every process and on every machine. Helpers the function calls are not
part of it: give ``code_version="2"`` to pin a version by hand, and bump it when a
helper changes. When the source cannot be read (a function made by ``exec``, a
REPL, a frozen application) the fingerprint is of the bytecode instead, which is
stable for one Python version (a Python upgrade then reads as a code change once).

**Data version.** A hash of the value: of its bytes for ``bytes``, else of its
msgpack encoding by msgspec with dict keys and sets in a deterministic order, so
equal values get equal versions in every process (a dict built in another order
included). A value msgspec cannot encode (a DataFrame, an open file) has no stable
encoding, and hashing its ``repr`` (often an address) would make every run a new
version, so it is refused: :class:`DataVersionError` says to return
``flowcore.Output(value, data_version=...)`` with a version of your own (a hash of
what you wrote, a source's ETag, a row count and a max timestamp).

Both are 32 hex digits (128 bits of BLAKE2b).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
import types
from collections.abc import Callable
from typing import Any, Final

import msgspec

from ..ids import type_name
from .errors import DataVersionError

__all__ = ["code_fingerprint", "data_version"]

_DIGEST_SIZE: Final = 16
_encoder = msgspec.msgpack.Encoder(order="deterministic")
#: Fingerprints by code object, so that 10,000 assets made by one factory function
#: read and parse its source once. The code object is kept in the value: its id
#: cannot be reused by another code object while the entry exists.
_fingerprints: dict[int, tuple[types.CodeType, str]] = {}


def _digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=_DIGEST_SIZE)
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


#: Values hashed as they are (a tuple: ``bytes | bytearray | memoryview`` would make a
#: union type at every call, a tenth of a microsecond).
_BYTES: Final = (bytes, bytearray, memoryview)
#: The hash of the tag part of every msgpack data version, copied per value.
_MSGPACK: Final = hashlib.blake2b(
    len(b"msgpack").to_bytes(8, "little") + b"msgpack", digest_size=_DIGEST_SIZE
)


def data_version(value: Any) -> str:
    """The data version of ``value``: a stable hash of its bytes or its msgpack encoding.

    >>> from flowcore.assets.versions import data_version
    >>> data_version({"a": 1, "b": [1, 2]}) == data_version({"b": [1, 2], "a": 1})
    True
    >>> len(data_version(b"raw bytes"))
    32
    """
    if isinstance(value, _BYTES):
        return _digest(b"bytes", bytes(value))
    try:
        encoded = _encoder.encode(value)
    except (TypeError, msgspec.EncodeError, ValueError, OverflowError) as exc:
        raise DataVersionError(
            f"cannot compute the data version of a {type_name(value)}: it has no stable "
            f"msgpack encoding ({exc}); return flowcore.Output(value, data_version=...) with a "
            "version of your own (a hash of what you wrote, a row count and a max timestamp), "
            "or return bytes, builtins, dataclasses or msgspec Structs"
        ) from None
    h = _MSGPACK.copy()  # = _digest(b"msgpack", encoded), its first part hashed once
    h.update(len(encoded).to_bytes(8, "little"))
    h.update(encoded)
    return h.hexdigest()


def code_fingerprint(fn: Callable[..., Any]) -> str:
    """The default code version of ``fn`` (see the module docstring for what it covers)."""
    code = getattr(fn, "__code__", None)
    if isinstance(code, types.CodeType):
        cached = _fingerprints.get(id(code))
        if cached is not None and cached[0] is code:
            return cached[1]
    fingerprint = _from_source(fn)
    if fingerprint is None:
        fingerprint = _digest(b"bytecode", _code_bytes(code)) if code is not None else ""
        if not fingerprint:
            fingerprint = _digest(b"qualname", getattr(fn, "__qualname__", repr(fn)).encode())
    if isinstance(code, types.CodeType):
        _fingerprints[id(code)] = (code, fingerprint)
    return fingerprint


def _from_source(fn: Callable[..., Any]) -> str | None:
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return None
    try:
        tree = ast.parse(source)
    except SyntaxError:  # e.g. a lambda in the middle of an expression: its line as text
        return _digest(b"text", "\n".join(line.rstrip() for line in source.splitlines()).encode())
    node = next(
        (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)),
        None,
    )
    if node is None:
        return _digest(b"tree", ast.dump(tree).encode())
    body = node.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]  # the docstring says why, not what
    kind = b"async def" if isinstance(node, ast.AsyncFunctionDef) else b"def"
    parts = [ast.dump(node.args), *(ast.dump(statement) for statement in body)]
    if node.returns is not None:
        parts.append(ast.dump(node.returns))
    return _digest(kind, *(part.encode() for part in parts))


def _code_bytes(code: types.CodeType) -> bytes:
    """A canonical form of a code object: its bytecode, names and constants, nested code
    objects included (their reprs hold addresses and file names, so they are walked)."""
    parts = [code.co_code, repr(code.co_names).encode(), repr(code.co_varnames).encode()]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            parts.append(_code_bytes(const))
        elif isinstance(const, frozenset):  # its order follows string hashing: sort it
            parts.append(repr(sorted(map(repr, const))).encode())
        else:
            parts.append(repr(const).encode())
    return b"\0".join(parts)
