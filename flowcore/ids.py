"""Identities: of runs, of this process, and of errors as they are recorded.

Small and dependency-free so that every layer, the store included, can name the
host a run ran on or record an error the same way.
"""

from __future__ import annotations

import os
import socket
import traceback
from typing import Final

__all__ = ["HOST", "MAX_TRACEBACK", "error_name", "new_run_id", "traceback_text"]

#: This machine's name, recorded on every run (crash detection asks "was it here?").
HOST: Final = socket.gethostname()
#: Characters of a traceback kept on a record: the end, where the error is.
MAX_TRACEBACK: Final = 20_000


def new_run_id() -> str:
    """A random (version 4) UUID in hex, like ``uuid.uuid4().hex`` at a third of its cost."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    return raw.hex()


def error_name(exc: BaseException) -> str:
    """How an error's type is recorded: ``ValueError``, ``httpx.HTTPStatusError``."""
    return type_name(exc)


def type_name(value: object) -> str:
    """A value's type as people write it: builtins bare, others with their module."""
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def traceback_text(exc: BaseException) -> str:
    """The traceback of ``exc`` as recorded: its last :data:`MAX_TRACEBACK` characters."""
    return "".join(traceback.format_exception(exc))[-MAX_TRACEBACK:]
