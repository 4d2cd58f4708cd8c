"""What every page shares: the store the app opened, query parameters read strictly (a bad
one is a 400 naming it and its range), and pages for errors."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Final

from starlette.exceptions import HTTPException
from starlette.requests import Request

from ..states import State
from ..store.base import Store

__all__ = ["STATES", "query_int", "query_state", "query_text", "query_time", "store_of"]

STATES: Final = [s.value for s in State]


def store_of(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def query_text(request: Request, name: str) -> str | None:
    """A text parameter; empty means not given (an empty filter field)."""
    value = request.query_params.get(name)
    return value if value else None


def query_int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise HTTPException(400, f"{name}: expected a whole number from {lo} to {hi}, got {raw!r}")
    return value


def query_state(request: Request, name: str = "state") -> str | None:
    value = query_text(request, name)
    if value is not None and value not in STATES:
        raise HTTPException(400, f"{name}: expected one of {', '.join(STATES)}, got {value!r}")
    return value


def query_time(request: Request, name: str) -> float | None:
    """A time as the browser's date-time field sends it (``2024-05-01T12:00``, local
    time), or ISO 8601 with a zone, or unix seconds."""
    raw = query_text(request, name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            return datetime.fromisoformat(raw).timestamp()
        except ValueError:
            pass
    else:
        if math.isfinite(value) and 0 <= value < 1e11:
            return value
    raise HTTPException(
        400, f"{name}: expected a date and time (2024-05-01T12:00) or unix seconds, got {raw!r}"
    )
