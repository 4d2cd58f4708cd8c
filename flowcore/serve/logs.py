"""What a server says: the ``flowcore.serve`` logger, and a stderr handler while serving.

One line per fired slot, trigger, skip and crash found, so a user following the
server's output sees what it does. Names, parameters and errors in those lines come
from users and runs: they are written with their control characters made visible
(:func:`flowcore.views.format.visible`), so a run cannot drive the terminal that
shows the log.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Final

from ..views.format import visible

__all__ = ["log", "on_stderr", "text", "when"]

#: The server's logger: what it fires, skips and finds.
log: Final = logging.getLogger("flowcore.serve")


def text(value: object) -> str:
    """User text (a name, a key, an error) as it may appear in a log line."""
    try:
        return visible(str(value))
    except Exception:
        return f"<{type(value).__qualname__}, str() failed>"


def when(t: float | None) -> str:
    """A slot time as it reads in the log: ISO 8601 UTC, to the millisecond."""
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@contextmanager
def on_stderr(level: int = logging.INFO) -> Iterator[None]:
    """Send the server's lines to stderr while serving, unless the program configured
    logging itself (a handler on the root logger or on ``flowcore.serve``): a service
    that set up logging keeps its own format and destination."""
    if log.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    previous = log.level
    log.addHandler(handler)
    if previous == logging.NOTSET:  # a level the program chose stays
        log.setLevel(level)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)
