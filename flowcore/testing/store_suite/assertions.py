"""Assertion helpers shared by the cases, so a failure says what was read and what was due.

A plugin author sees only the ``AssertionError`` text of a failed case (the suite
imports no test framework to show a diff), so every check spells out the two
values itself.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["all_close", "differs", "is_close", "raises"]

_E = TypeVar("_E", bound=BaseException)


def differs(what: str, got: object, want: object) -> str:
    """The message of a failed comparison: what was read, then the value due."""
    return f"{what}:\n    got  {got!r}\n    want {want!r}"


async def raises(kind: type[_E], call: Awaitable[object], what: str) -> _E:
    """The ``kind`` error ``call`` raises; an AssertionError if it returns or raises another."""
    try:
        result = await call
    except kind as exc:
        return exc
    except Exception as exc:
        raise AssertionError(
            f"{what}: expected {kind.__name__}, got {type(exc).__name__}: {exc}"
        ) from exc
    raise AssertionError(f"{what}: expected {kind.__name__}, but it returned {result!r}")


def is_close(got: float, want: float) -> bool:
    """Equal up to float rounding: a store may keep times as text or as another float type."""
    return abs(got - want) <= 1e-9 * max(1.0, abs(want))


def all_close(got: list[float], want: list[float]) -> bool:
    """:func:`is_close` for each pair of two lists of the same length."""
    return len(got) == len(want) and all(is_close(g, w) for g, w in zip(got, want, strict=True))
