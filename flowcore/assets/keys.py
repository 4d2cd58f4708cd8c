"""The grammar of asset keys and partition keys, shared by definitions, graphs and I/O.

An **asset key** is one or more segments joined by ``/`` (``"orders"``,
``"raw/events"``): a prefix path groups assets the way folders do. Each segment is
letters, digits, ``_``, ``-`` and ``.`` (not ``.`` or ``..`` alone), so a key is
also a safe relative path (files I/O stores under it) and reads the same in a
terminal, a URL and a file listing.

A **parameter** refers to an upstream asset by the key with each ``/`` written
``__`` (``raw__events`` is ``raw/events``), or through ``ins={"events": "raw/events"}``
(for a key whose segments are not Python identifiers, such as ``daily-report``).

A **partition key** is any non-empty string of at most :data:`MAX_PARTITION_KEY`
characters without control characters or lone surrogates: what a store can keep as
text and a terminal can show. Files I/O encodes it into a file name.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Final

from .errors import AssetDefinitionError, PartitionKeyError

__all__ = [
    "MAX_PARTITION_KEY",
    "check_asset_key",
    "check_partition_key",
    "key_of_parameter",
    "parameter_of_key",
    "partition_key_problem",
]

#: The longest partition key, in characters.
MAX_PARTITION_KEY: Final = 1000
_SEGMENT: Final = re.compile(r"[\w.-]+")


def check_asset_key(key: object, *, what: str = "asset key") -> str:
    """``key`` (a str, or a sequence of segments) as a ``/``-joined key, checked."""
    if isinstance(key, Sequence) and not isinstance(key, str):
        if not all(isinstance(part, str) for part in key):
            raise AssetDefinitionError(f"{what} must be a str such as 'raw/events', got {key!r}")
        key = "/".join(key)
    if not isinstance(key, str) or not key:
        raise AssetDefinitionError(
            f"{what} must be a non-empty str such as 'orders' or 'raw/events', got {key!r}"
        )
    for segment in key.split("/"):
        if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise AssetDefinitionError(
                f"{what} {key!r} has an invalid segment {segment!r}: segments are joined by '/' "
                "and made of letters, digits, '_', '-' and '.' (not '.' or '..' alone), e.g. "
                "'raw/events'"
            )
    return key


def parameter_of_key(key: str) -> str:
    """The parameter name that refers to ``key``: ``raw/events`` → ``raw__events``."""
    return key.replace("/", "__")


def key_of_parameter(name: str) -> str:
    """The key a parameter name refers to: ``raw__events`` → ``raw/events``."""
    return name.replace("__", "/")


def partition_key_problem(key: object) -> str:
    """What is wrong with ``key`` as a partition key, or ``""``."""
    if not isinstance(key, str):
        return f"a partition key must be a str, got {type(key).__name__} {key!r}"
    if not key:
        return "a partition key must not be empty"
    if len(key) > MAX_PARTITION_KEY:
        return f"a partition key must have at most {MAX_PARTITION_KEY} characters, got {len(key)}"
    if key.isascii() and key.isprintable():
        return ""
    for char in key:
        category = unicodedata.category(char)
        if category == "Cc":
            return (
                f"partition key {key!r} contains the control character {char!r}: keys are "
                "shown in terminals and used in file names; remove it"
            )
        if category == "Cs":
            return (
                f"partition key {key!r} contains a lone surrogate {char!r} (text decoded from "
                "bytes that were not UTF-8): decode it properly, or escape it"
            )
    return ""


def check_partition_key(key: object) -> str:
    """``key``, when it is a valid partition key; else :class:`PartitionKeyError`."""
    if problem := partition_key_problem(key):
        raise PartitionKeyError(problem)
    assert isinstance(key, str)
    return key
