"""Identities: of runs, of this process, and of errors and values as they are recorded.

Small and dependency-free so that every layer, the store included, can name the
host a run ran on or record an error the same way.

Recording must never fail because of what it records: an error message read from
a file name that is not UTF-8 (``os.fsdecode`` turns its bytes into lone
surrogates, which neither SQLite nor msgpack accept), an exception whose
``__str__`` raises, a value whose ``repr`` does. The ``safe_*`` helpers and
:func:`error_message` give text that is always recordable, and cost a type
check when the text is plain (they run on failures and on cold paths only).
"""

from __future__ import annotations

import functools
import os
import random
import re
import socket
import time
import traceback
from typing import Any, Final

__all__ = [
    "BIDI_AND_SEPARATORS",
    "HOST",
    "MAX_TRACEBACK",
    "error_message",
    "error_name",
    "new_run_id",
    "recorded_text",
    "safe_repr",
    "safe_str",
    "safe_text",
    "traceback_text",
    "visible",
]

#: This machine's name, recorded on every run (crash detection asks "was it here?").
HOST: Final = socket.gethostname()
#: Characters of a traceback kept on a record: the end, where the error is.
MAX_TRACEBACK: Final = 20_000
#: Characters of an error message kept on a record.
MAX_MESSAGE: Final = 2000


def new_run_id() -> str:
    """A new run id: 32 hex characters whose first 8 are a clock and the rest random.

    Why not a random id: every run writes rows keyed by its id (its flow run row and
    that key's index, its task runs keyed by ``(run id, seq)``). With random ids each
    run lands on a random page of those B-trees, so a commit of fifty run ends
    rewrote some fifty pages of each: 1.7 MB of SQLite WAL per commit for a service's
    requests. With the leading characters a clock, the runs made together are
    neighbours there, and a commit rewrites a few pages.

    Why not a timestamp at the front (UUIDv7): people tell runs apart by their first
    8 characters (``flowcore runs show 3f2a9c1b``, ``run.id[:8]`` everywhere), and
    those of a timestamp are the same for every run of the same minute. So the first
    8 characters are the microseconds since the epoch modulo 2**32: a clock that turns
    every 71.6 minutes. Ids made within a few milliseconds share pages (the rows of
    earlier turns in that window are few); ids made by one process within a turn never
    share those 8 characters (its count never repeats a value nor goes back, however
    the wall clock moves); and over many turns they are as spread out as random ones.

    The other 24 carry 90 random bits (from a private generator, seeded by the
    operating system and again in a forked child), which make ids unique across
    processes; and the version (8) and variant bits make the id a valid RFC 9562 UUID,
    as the random (version 4) ids made before were. Costs about 0.6 µs.
    """
    global _last_us
    now = time.time_ns() // 1000
    last = _last_us
    _last_us = now = now if now > last else last + 1  # never twice, never back
    return f"{(now & 0xFFFFFFFF) << 96 | _rand.getrandbits(96) & _RANDOM | _UUID8:032x}"


#: The random bits of a run id (all of the 96 below the clock but the version and
#: variant), and the version (8) and variant (RFC 9562) bits.
_RANDOM: Final = (1 << 96) - 1 & ~(0xF << 76) & ~(0x3 << 62)
_UUID8: Final = 0x8 << 76 | 0x2 << 62
#: The last microsecond count a run id was made with (see new_run_id).
_last_us = 0
#: Not the ``random`` module's generator: a program that seeds it (tests, simulations)
#: would make the same run ids in every process it starts.
_rand = random.Random()
if hasattr(os, "register_at_fork"):
    # A forked child must not make the ids its parent (or its siblings) make.
    os.register_at_fork(after_in_child=_rand.seed)


def error_name(exc: BaseException) -> str:
    """How an error's type is recorded: ``ValueError``, ``httpx.HTTPStatusError``."""
    return type_name(exc)


def type_name(value: object) -> str:
    """A value's type as people write it: builtins bare, others with their module."""
    t = type(value)
    name = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    return name if name.isascii() else safe_text(name)


def error_message(exc: BaseException, limit: int = MAX_MESSAGE) -> str:
    """``str(exc)`` as recorded: at most ``limit`` characters, never raising (an
    exception whose ``__str__`` raises is described instead), always recordable."""
    return safe_str(exc)[:limit]


def traceback_text(exc: BaseException) -> str:
    """The traceback of ``exc`` as recorded: its last :data:`MAX_TRACEBACK` characters."""
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception as failure:  # e.g. a chain of causes too deep to format
        text = (
            f"{error_name(exc)}: {error_message(exc)}\n"
            f"(the traceback could not be formatted: {error_name(failure)})\n"
        )
    return safe_text(text[-MAX_TRACEBACK:])


# -- text safe to show on a terminal --------------------------------------------------------

#: What a terminal acts on instead of showing: C0 controls, DEL, C1 controls (0x9b is
#: a one-byte CSI), the Arabic letter mark, the bidi marks, embeddings, overrides and
#: isolates, the line and paragraph separators, and lone surrogates (which cannot be
#: written out at all). Joiners and other format characters stay: emoji need them.
BIDI_AND_SEPARATORS = "\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
_UNSAFE = f"[\x00-\x1f\x7f-\x9f{BIDI_AND_SEPARATORS}\ud800-\udfff]"
_UNSAFE_BUT_NEWLINE = f"[\x00-\x09\x0b-\x1f\x7f-\x9f{BIDI_AND_SEPARATORS}\ud800-\udfff]"
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled, at its first use: these classes of wide ranges take about half
    a millisecond each to compile, which ``import flowcore`` need not pay (they are used
    to show text on a terminal, and on text that is not valid Unicode)."""
    return re.compile(pattern)


def _escape_control(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str, *, multiline: bool = False) -> str:
    """``text`` safe to show on a terminal: each control character written as its
    Python escape (``\\x1b``, ``\\r``, ``\\u202e``), so it shows instead of acting.

    ``multiline``: keep newlines, for a field shown on several lines (a traceback,
    an error message); elsewhere a newline is shown as ``\\n`` too, so user text
    never starts a line of its own. Everything else, other scripts and emoji
    included, is left as it is. Markup is not this function's business: show the
    result as plain text (a rich ``Text``, not a markup string; escaped HTML).
    """
    pattern = _compiled(_UNSAFE_BUT_NEWLINE if multiline else _UNSAFE)
    if pattern.search(text) is None:  # nearly always: no copy
        return text
    return pattern.sub(_escape_control, text)


# -- text that can always be recorded -------------------------------------------------------

_SURROGATE = "[\ud800-\udfff]"


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:
        # A byte that os.fsdecode (the surrogateescape handler) could not decode:
        # shown as Python shows bytes, so b"caf\xe9.csv" reads back as caf\xe9.csv.
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def safe_text(text: str) -> str:
    """``text`` if it is valid Unicode for UTF-8 (almost always: returned as is), else
    with its lone surrogates escaped (``\\xe9`` for an undecodable byte, else ``\\udXXX``)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _compiled(_SURROGATE).sub(_escape, text)
    return text


def recorded_text(value: Any, *, nul: bool = False) -> Any:
    """``value`` as the text it is recorded as: strings with lone surrogates escaped
    (:func:`safe_text`), and with ``nul`` a NUL written ``\\x00`` (SQLite keeps one,
    PostgreSQL's text cannot); in tuples and lists too; ``value`` itself when nothing
    changes.

    The one text rule of recording (the recorder makes a refused record recordable
    with it) and of lookups: a name with a lone surrogate (an ``os.fsdecode``-d file
    name) is recorded escaped, and looked up as given it would fail to encode (a
    ``UnicodeEncodeError`` out of a read) where it should find the record. Stores call
    it after such a failure only, so the common lookup pays nothing."""
    if isinstance(value, str):
        text = safe_text(value)
        if nul and "\x00" in text:
            text = text.replace("\x00", "\\x00")
        return value if text is value else text
    if type(value) is tuple or type(value) is list:
        items = [recorded_text(v, nul=nul) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return items if type(value) is list else tuple(items)
    return value


def safe_str(value: object) -> str:
    """``str(value)``, recordable, never raising: a ``__str__`` that raises (or returns
    something else than a str) gives ``<unprintable TYPE: str() raised ERROR>``."""
    try:
        text = str(value)
    except Exception as exc:
        return f"<unprintable {type_name(value)}: str() raised {type_name(exc)}>"
    return safe_text(text)


def safe_repr(value: object, limit: int | None = None) -> str:
    """``repr(value)`` (cut to ``limit`` characters), recordable, never raising: a
    ``__repr__`` that raises, an int past the digit limit, a value nested too deep give
    ``<TYPE: repr failed>``."""
    try:
        text = repr(value)
    except Exception:
        return f"<{type_name(value)}: repr failed>"
    if limit is not None:
        text = text[:limit]
    return safe_text(text)
