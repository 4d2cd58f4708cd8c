"""How times, durations, sizes and recorded values read, for every front end.

Plain strings, no terminal styling: the CLI's rich views and the web UI format
the same value the same way.

Every text that comes from a run (task and flow names, parameters, inputs,
results, error messages, tracebacks, span names and attributes, limit and host
names) is user data, and may hold characters a terminal acts on instead of
showing: an OSC 52 clipboard write, a screen clear, a carriage return that
overwrites the line, a bidi override that reorders it. :func:`visible` is the one
place that makes such text safe to show, for the CLI and the web UI alike; the
JSON of :func:`to_json` keeps the exact data, with those characters escaped.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from ..encoding import decode_inputs, placeholder
from ..ids import BIDI_AND_SEPARATORS, visible

__all__ = [
    "cut",
    "decode_recorded",
    "format_duration",
    "format_local_time",
    "format_ns",
    "format_size",
    "iso_ns",
    "iso_utc",
    "json_fallback",
    "safe_repr",
    "safe_str",
    "short_value",
    "to_json",
    "visible",
]

#: What JSON text may hold raw but a terminal acts on (JSON encoders escape only C0).
_UNSAFE_IN_JSON = re.compile(f"[\x7f-\x9f{BIDI_AND_SEPARATORS}]")


def format_duration(seconds: float | None) -> str:
    """A duration people read at a glance: ``0.4 ms``, ``120 ms``, ``3.21 s``, ``2 m 05 s``."""
    if seconds is None:
        return "-"
    s = max(seconds, 0.0)
    if s < 0.001:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 10:
        return f"{s:.2f} s"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        minutes, secs = divmod(int(s), 60)
        return f"{minutes} m {secs:02d} s"
    hours, rest = divmod(int(s), 3600)
    return f"{hours} h {rest // 60:02d} m"


def format_ns(ns: int) -> str:
    """A span's duration or offset, finer than a run's: ``840 µs``, ``12.3 ms``, ``2.41 s``."""
    ns = max(ns, 0)
    if ns < 1_000_000:
        return f"{ns / 1000:.0f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f} ms"
    if ns < 60_000_000_000:
        return f"{ns / 1e9:.2f} s"
    return format_duration(ns / 1e9)


def format_local_time(ts: float | None) -> str:
    """A timestamp in the reader's local time, to the second."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def iso_utc(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 in UTC (``2024-05-01T12:00:00.123456Z``), for JSON."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def iso_ns(ns: int | None) -> str | None:
    """A time in ns since the epoch as ISO 8601 UTC, to the microsecond (exact, no float)."""
    if not ns:
        return None
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


def format_size(size: int | None) -> str:
    """A byte count people read at a glance: ``812 B``, ``16.0 KiB``, ``3.4 MiB``."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def cut(text: str, limit: int = 80, ellipsis: str = "...") -> str:
    """``text`` cut to ``limit`` characters, ending in ``ellipsis`` when cut."""
    if limit <= 0:
        return ""
    if len(text) <= limit:
        return text
    return text[: max(limit - len(ellipsis), 0)] + ellipsis


def safe_repr(value: Any) -> str:
    """``repr(value)``, or a stand-in when its ``__repr__`` fails (a view must not stop)."""
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__qualname__}, repr failed>"


def safe_str(value: object) -> str:
    """``str(value)``, or a stand-in when its ``__str__`` fails (an error line must print)."""
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__qualname__}, str() failed>"


def decode_recorded(data: bytes) -> Any:
    """Recorded inputs or parameters; a record that does not decode must not stop a view."""
    try:
        return decode_inputs(data)
    except msgspec.DecodeError as exc:
        return placeholder("undecodable", data, error=str(exc)[:200])


def short_value(value: Any) -> str:
    """One recorded value for a one-line view: placeholders as ``<...>``, long reprs cut,
    control characters made :func:`visible`."""
    if isinstance(value, dict) and "__flowcore__" in value:
        kind = value["__flowcore__"]
        if kind == "future":
            text = f"<result of {value.get('task')} #{value.get('seq')}>"
        elif kind == "secret":
            return "<secret>"
        else:
            text = f"<{kind} {value.get('type', '')}>".replace(" >", ">")
        return cut(visible(text))
    return cut(visible(safe_repr(value)))


def json_fallback(value: Any) -> Any:
    """What JSON cannot hold, shown as inputs are recorded: a ``{"__flowcore__": ...}``."""
    return placeholder("unencodable", value, repr=safe_repr(value)[:200])


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def to_json(data: Any) -> str:
    """Indented JSON text; values JSON cannot hold become ``{"__flowcore__": ...}`` stand-ins.

    The data stays exact; the characters a terminal acts on that JSON may hold raw
    (DEL, C1 controls, bidi controls, line separators) are written as ``\\uXXXX``
    escapes, so printing the JSON is as safe as printing a view.
    """
    text = msgspec.json.format(msgspec.json.encode(data, enc_hook=json_fallback), indent=2).decode()
    if _UNSAFE_IN_JSON.search(text) is None:
        return text
    # Outside strings JSON holds only ASCII punctuation, digits, letters and whitespace,
    # so each such character is inside a string, where its escape means the same.
    return _UNSAFE_IN_JSON.sub(_json_escape, text)
