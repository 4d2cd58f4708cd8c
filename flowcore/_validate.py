"""The checks every option shares, with one grammar for their messages.

Each returns a phrase naming the problem (```timeout` must be ...``), or ``""``
when there is none, so a caller can collect every problem of a call and report
them all at once.
"""

from __future__ import annotations

import math

__all__ = ["count", "flag", "is_number", "name", "seconds"]


def is_number(value: object) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def count(option: str, value: object, *, minimum: int = 1, optional: bool = True) -> str:
    """An int of at least ``minimum`` (or None when ``optional``)."""
    if value is None and optional:
        return ""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        tail = " or None" if optional else ""
        return f"`{option}` must be an int >= {minimum}{tail}, got {value!r}"
    return ""


def seconds(option: str, value: object, *, zero: bool = False, optional: bool = True) -> str:
    """A finite number of seconds, > 0 (>= 0 when ``zero``), or None when ``optional``."""
    if value is None and optional:
        return ""
    if not is_number(value) or value < 0 or (value == 0 and not zero):  # type: ignore[operator]
        bound = ">= 0" if zero else "> 0"
        tail = " or None" if optional else ""
        return f"`{option}` must be a number of seconds {bound}{tail}, got {value!r}"
    return ""


def flag(option: str, value: object) -> str:
    """True or False (not a truthy stand-in: a typo such as ``"false"`` must not pass)."""
    if value is not True and value is not False:
        return f"`{option}` must be True or False, got {value!r}"
    return ""


def name(option: str, value: object, *, optional: bool = True) -> str:
    """A non-empty str (or None when ``optional``)."""
    if value is None and optional:
        return ""
    if not isinstance(value, str) or not value:
        return f"`{option}` must be a non-empty str, got {value!r}"
    return ""
