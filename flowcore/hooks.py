"""State hooks: functions called when a flow run or a task run reaches a state.

``@flowcore.flow(on_failure=[notify])`` and ``@flowcore.task(on_completion=...)``
take, for each of ``on_completion``, ``on_failure``, ``on_cancellation``,
``on_crashed`` (flows only) and ``on_retry``, a function or a list of functions,
sync or async, each called with one :class:`HookEvent`. This module holds the
values (the event, a run's :class:`Hooks`, the checks made at decoration) and
:func:`webhook`, a ready-made hook that posts the event as JSON; the engine runs
hooks (``flowcore.engine.hooks``): one after the other, each within
``hook_timeout`` seconds, shielded from the run's cancellation, sync ones in a
worker thread. A hook that raises or times out is logged and recorded on the
run, and never changes the run's state.

What fires which hooks:

- ``on_completion``: the run completed (a task run served from the cache, or
  replayed by a resume, completed too: its event's ``state`` says which);
- ``on_failure``: every way a run can fail: an error, a timeout (``TimedOut``),
  invalid parameters, a failed upstream (``UpstreamFailed``), and, for a flow,
  a crash found by ``flowcore serve`` (after its ``on_crashed`` hooks);
- ``on_cancellation``: the run was cancelled (Ctrl-C, SIGTERM, an outer cancel
  scope): its hooks run while the run is being cancelled;
- ``on_crashed``: the run's process died (found by another process);
- ``on_retry``: an attempt failed and the run is Retrying, before the backoff wait;
- ``on_overdue`` (an asset's option, ``@flowcore.asset(freshness=..., on_overdue=...)``):
  the asset is past its freshness deadline, found by ``flowcore serve``, once per
  overdue period across servers; the event's ``asset`` says which and since when, its
  ``flow_run`` is the run that last materialised it (a placeholder when none did).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias, TypeVar, cast
from urllib.parse import urlsplit

import anyio
import msgspec

from . import _validate
from .errors import ConfigurationError, FlowcoreError
from .ids import error_message, error_name, safe_repr, safe_text
from .records import FlowRunRecord, TaskRunRecord
from .states import State

__all__ = [
    "HOOKS_LOGGER",
    "HOOK_OPTIONS",
    "HOOK_TIMEOUT",
    "Hook",
    "HookEvent",
    "HookKind",
    "HookOption",
    "HookTimeout",
    "Hooks",
    "WebhookError",
    "event_kind",
    "hook_name",
    "hooks_from_options",
    "snapshot",
    "webhook",
]

#: What happened: the ``kind`` of a :class:`HookEvent`.
HookKind: TypeAlias = Literal[
    "completion", "failure", "cancellation", "crashed", "retry", "overdue"
]
#: A hook: called with one :class:`HookEvent`; a plain function runs in a worker thread,
#: an ``async def`` on the event loop. What it returns is ignored.
Hook: TypeAlias = Callable[["HookEvent"], Any]
#: What an ``on_*`` option takes: a hook, a list of hooks, or ``None`` (no hooks).
HookOption: TypeAlias = Hook | Sequence[Hook] | None

#: The options of ``@flowcore.flow`` and ``@flowcore.task`` that take hooks, by the
#: :data:`HookKind` they fire for.
HOOK_OPTIONS: Final[Mapping[str, HookKind]] = {
    "on_completion": "completion",
    "on_failure": "failure",
    "on_cancellation": "cancellation",
    "on_crashed": "crashed",
    "on_retry": "retry",
}
#: The default ``hook_timeout`` (seconds).
HOOK_TIMEOUT: Final = 30.0
#: The logger that reports failed hooks (WARNING), and the logger name of the line each
#: failed hook leaves in its run's log (ERROR), which ``flowcore runs show`` lists.
HOOKS_LOGGER: Final = "flowcore.hooks"

_KINDS: Final[Mapping[State, HookKind]] = {
    State.COMPLETED: "completion",
    State.CACHED: "completion",
    State.FAILED: "failure",
    State.TIMED_OUT: "failure",
    State.UPSTREAM_FAILED: "failure",
    State.CANCELLED: "cancellation",
    State.CRASHED: "crashed",
}


def event_kind(state: State) -> HookKind | None:
    """The hooks a run that ended in ``state`` fires: ``"completion"`` for Completed and
    Cached, ``"failure"`` for Failed, TimedOut and UpstreamFailed, ``"cancellation"``,
    ``"crashed"``; ``None`` for a state that is not an end."""
    return _KINDS.get(state)


class HookTimeout(FlowcoreError, TimeoutError):
    """A hook did not finish within its ``hook_timeout``: it was abandoned (recorded on
    the run as a failed hook; the run's state is unchanged)."""


class WebhookError(FlowcoreError):
    """A :func:`webhook` could not deliver its event: the server refused it, or kept
    failing through every retry (recorded on the run as a failed hook)."""


class Hooks(msgspec.Struct, frozen=True):
    """The hooks of a flow or a task, by kind, and how long each may run.

    Made by ``@flowcore.flow(...)`` and ``@flowcore.task(...)`` from their ``on_*``
    options (see :func:`hooks_from_options`); false when it holds no hook at all, so
    a run without hooks pays one check.

    >>> hooks = flowcore.hooks.Hooks(on_failure=(print,), timeout=5.0)
    >>> bool(hooks), hooks.of("failure") == (print,), hooks.of("completion")
    (True, True, ())
    """

    on_completion: tuple[Hook, ...] = ()
    on_failure: tuple[Hook, ...] = ()
    on_cancellation: tuple[Hook, ...] = ()
    on_crashed: tuple[Hook, ...] = ()
    on_retry: tuple[Hook, ...] = ()
    #: Seconds each hook may run before it is abandoned (``hook_timeout``).
    timeout: float = HOOK_TIMEOUT

    def __bool__(self) -> bool:
        return bool(
            self.on_completion
            or self.on_failure
            or self.on_cancellation
            or self.on_crashed
            or self.on_retry
        )

    def of(self, kind: HookKind) -> tuple[Hook, ...]:
        """The hooks that fire for ``kind``, in order."""
        hooks: tuple[Hook, ...] = getattr(self, f"on_{kind}")
        return hooks


def hooks_from_options(
    base: Hooks, given: Mapping[str, Any], problems: list[str], *, what: str
) -> Hooks:
    """``base`` with the hook options in ``given`` (``on_*`` and ``hook_timeout``)
    changed; what is not named is kept. Each problem found is appended to ``problems``
    (the caller reports them all at once); ``base`` is returned when there is one.
    ``what``: ``"flow"`` or ``"task"`` (``on_crashed`` is for flows only)."""
    changes: dict[str, Any] = {}
    found: list[str] = []
    for option in HOOK_OPTIONS:
        if option in given:
            changes[option] = _hook_list(option, given[option], found, what)
    if "hook_timeout" in given:
        timeout = given["hook_timeout"]
        if problem := _validate.seconds("hook_timeout", timeout, optional=False):
            found.append(problem)
        else:
            changes["timeout"] = float(timeout)
    if found:
        problems.extend(found)
        return base
    return msgspec.structs.replace(base, **changes) if changes else base


def _hook_list(option: str, value: object, problems: list[str], what: str) -> tuple[Hook, ...]:
    if value is None:
        return ()
    if option == "on_crashed" and what == "task":
        problems.append(
            "`on_crashed` is for flows: a task run is found crashed only by another process, "
            "after this one died, where the task's hooks cannot run; put on_crashed on the "
            "flow (@flowcore.flow(on_crashed=...)), which `flowcore serve` fires"
        )
        return ()
    items = list(value) if isinstance(value, list | tuple) else [value]
    hooks: list[Hook] = []
    for item in items:
        problem = _hook_problem(option, item)
        if problem:
            problems.append(problem)
        else:
            hooks.append(cast(Hook, item))
    return tuple(hooks)


def _hook_problem(option: str, hook: object) -> str:
    """Why ``hook`` cannot be a hook of ``option`` (``""``: it can)."""
    if inspect.iscoroutine(hook):
        name = getattr(hook, "__qualname__", "the function")
        hook.close()  # never awaited, and never to be: no "was never awaited" warning
        return (
            f"`{option}` takes functions, got a coroutine object: {name}(...) was called "
            f"here; pass the function itself ({option}={name})"
        )
    if not callable(hook):
        return (
            f"`{option}` takes a function or a list of functions (each called with one "
            f"flowcore.hooks.HookEvent), got {type(hook).__name__} {safe_repr(hook, 80)}"
        )
    name = hook_name(hook)
    if inspect.isgeneratorfunction(hook) or inspect.isasyncgenfunction(hook):
        return (
            f"`{option}` hook {name} is a generator function: calling it would not run its "
            "body; make it a plain function (or an async def without yield)"
        )
    try:
        signature = inspect.signature(hook)
    except (TypeError, ValueError):  # a builtin without a signature: taken on trust
        return ""
    try:
        signature.bind(None)
    except TypeError:
        return (
            f"`{option}` hook {name} cannot be called with one argument (its signature is "
            f"{name}{signature}); a hook is called with one flowcore.hooks.HookEvent: "
            f"def {name}(event): ..."
        )
    return ""


def hook_name(hook: Callable[..., Any]) -> str:
    """How messages name a hook: its qualified name (``notify``, ``Alerts.send``), or
    its repr (a :func:`webhook` shows its address without its path)."""
    if isinstance(hook, _Webhook):
        return repr(hook)
    name = getattr(hook, "__qualname__", None)
    if isinstance(name, str):
        return safe_text(name)
    return safe_repr(hook, 100)


# -- the event -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HookEvent:
    """What a hook is called with: what happened, to which run, and why.

    ``flow_run`` and ``task_run`` are copies of the records as they were when the hooks
    fired (a terminal record for an end; the flow run still Running for a task run's
    hook): a hook may read them, and changing them changes nothing recorded.
    :meth:`to_dict` gives the event as JSON-ready data (what :func:`webhook` posts).
    """

    #: What happened. The ``on_failure`` hooks of a flow run found crashed get
    #: ``"crashed"`` (after its ``on_crashed`` hooks).
    kind: HookKind
    #: The flow run (for a task run's hook: the flow run it belongs to).
    flow_run: FlowRunRecord
    #: The state the run reached: Completed, Cached, Failed, TimedOut, UpstreamFailed,
    #: Cancelled, Crashed, or Retrying.
    state: State
    #: The task run, for a task's hook; ``None`` for a flow's.
    task_run: TaskRunRecord | None = None
    #: The error that ended the run (or made the attempt retry), when there is one; for
    #: a cancellation, a ``KeyboardInterrupt`` or ``SystemExit`` that caused it.
    exception: BaseException | None = None
    #: For ``"retry"``: the seconds the run waits before its next attempt.
    retry_delay: float | None = None
    #: When the hooks fired (unix seconds).
    time: float = field(default_factory=time.time)
    #: For ``"overdue"``: ``{"key", "partition", "due_by", "last_materialized"}`` (times
    #: as ISO 8601 UTC text, ``None`` when never).
    asset: Mapping[str, Any] | None = None

    @property
    def run_id(self) -> str:
        """The flow run's id."""
        return self.flow_run.id

    @property
    def name(self) -> str:
        """The task's name for a task run's hook, else the flow's."""
        return self.task_run.name if self.task_run is not None else self.flow_run.name

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready data: dicts, lists, str, int, finite floats, bools and
        ``None`` only; every text valid Unicode (an error message holding lone surrogates
        is escaped), times as ISO 8601 UTC text. Errors are given by type and message
        (no traceback); parameters as recorded (a ``flowcore.Secret`` stays hidden).

        >>> event = HookEvent("failure", flowcore.FlowRunRecord("r1", "etl", flowcore.State.FAILED,
        ...     0.0), flowcore.State.FAILED, exception=ValueError("bad\\udcff"), time=0.0)
        >>> event.to_dict()["exception"], event.to_dict()["time"]
        ({'type': 'ValueError', 'message': 'bad\\\\xff'}, '1970-01-01T00:00:00Z')
        """
        exc = self.exception
        return {
            "event": self.kind,
            "state": self.state.value,
            "time": _iso(self.time),
            "name": safe_text(self.name),
            "flow_run": _flow_run(self.flow_run),
            "task_run": None if self.task_run is None else _task_run(self.task_run),
            "exception": (
                None if exc is None else {"type": error_name(exc), "message": error_message(exc)}
            ),
            "retry_delay": _jsonable(self.retry_delay),
            **({} if self.asset is None else {"asset": _jsonable(dict(self.asset))}),
        }


_Record = TypeVar("_Record", FlowRunRecord, TaskRunRecord)


def snapshot(record: _Record) -> _Record:
    """A copy of a run record that shares nothing mutable with it (for an event: a hook
    that changes it changes nothing recorded). A few µs, paid only when hooks fire."""
    return msgspec.msgpack.decode(msgspec.msgpack.encode(record), type=type(record))


def _iso(seconds: float | None) -> str | None:
    if seconds is None or not math.isfinite(seconds):
        return None
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")[:-6] + "Z"


def _flow_run(run: FlowRunRecord) -> dict[str, Any]:
    return {
        "id": run.id,
        "name": safe_text(run.name),
        "kind": run.kind,
        "state": run.state.value,
        "parameters": _parameters(run.parameters),
        "created": _iso(run.created),
        "started": _iso(run.started),
        "ended": _iso(run.ended),
        "duration": _jsonable(run.duration),
        "task_count": run.task_count,
        "error_type": _text(run.error_type),
        "error_message": _text(run.error_message),
        "parent_run_id": run.parent_run_id,
        "resumed_from": run.resumed_from,
        "launched_by": _text(run.launched_by),
        "scheduled_for": _iso(run.scheduled_for),
        "host": safe_text(run.host),
        "pid": run.pid,
    }


def _task_run(tr: TaskRunRecord) -> dict[str, Any]:
    return {
        "run_id": tr.run_id,
        "seq": tr.seq,
        "label": tr.label,
        "name": safe_text(tr.name),
        "run_name": _text(tr.run_name),
        "state": tr.state.value,
        "attempts": tr.attempts,
        "created": _iso(tr.created),
        "started": _iso(tr.started),
        "ended": _iso(tr.ended),
        "duration": _jsonable(tr.duration),
        "error_type": _text(tr.error_type),
        "error_message": _text(tr.error_message),
        "tags": [safe_text(t) for t in tr.tags or ()],
    }


def _text(value: str | None) -> str | None:
    return None if value is None else safe_text(value)


def _parameters(recorded: bytes) -> Any:
    if not recorded:
        return {}
    try:
        return _jsonable(msgspec.msgpack.decode(recorded))
    except Exception:  # recorded by another flowcore, or damaged: not the hook's problem
        return {"__flowcore__": "undecodable"}


def _jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` (decoded msgpack: recorded values) with nothing JSON cannot hold: bytes as
    a placeholder, non-finite floats as text, keys as text, every text valid Unicode."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return safe_text(value)
    if depth > 64:
        return {"__flowcore__": "too_deep"}
    if isinstance(value, Mapping):
        return {
            (safe_text(k) if isinstance(k, str) else safe_repr(k, 200)): _jsonable(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return {"__flowcore__": "bytes", "size": len(value)}
    return safe_repr(value, 200)


# -- webhooks ----------------------------------------------------------------------------------


class _Webhook:
    """The hook :func:`webhook` makes (an async callable)."""

    __slots__ = (
        "backoff", "headers", "max_backoff", "payload", "retries", "shown", "timeout", "url",
    )  # fmt: skip

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        timeout: float,
        retries: int,
        backoff: float,
        max_backoff: float,
        payload: Callable[[HookEvent], Any] | None,
    ) -> None:
        self.url = url
        self.headers = headers
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.payload = payload
        self.shown = _shown_url(url)

    async def __call__(self, event: HookEvent) -> None:
        # Imported when a webhook first fires: `import flowcore` stays light.
        import json

        import httpx

        data = event.to_dict() if self.payload is None else self.payload(event)
        if isinstance(data, Awaitable):
            data = await data
        body = json.dumps(data, ensure_ascii=False, allow_nan=False).encode("utf-8", "replace")
        headers = {"content-type": "application/json", "user-agent": "flowcore", **self.headers}
        attempts = self.retries + 1
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            for attempt in range(1, attempts + 1):
                try:
                    response = await client.post(self.url, content=body, headers=headers)
                except httpx.TransportError as exc:
                    why = f"{error_name(exc)}: {error_message(exc, 300) or 'no response'}"
                else:
                    status = response.status_code
                    if status < 300:
                        return
                    why = f"HTTP {status} {_reason(response.text)}"
                    if status < 500 and status != 429:  # refused: asking again changes nothing
                        raise WebhookError(
                            f"webhook {self.shown} refused the {event.kind} event of "
                            f"{_subject(event)}: {why}; check its address and headers"
                        )
                if attempt < attempts:
                    await anyio.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
        raise WebhookError(
            f"webhook {self.shown} could not take the {event.kind} event of {_subject(event)} "
            f"after {attempts} attempt{'s' * (attempts > 1)}: {why}"
        )

    def __repr__(self) -> str:
        return f"webhook({self.shown})"


def webhook(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    retries: int = 3,
    backoff: float = 0.5,
    max_backoff: float = 10.0,
    payload: Callable[[HookEvent], Any] | None = None,
) -> Hook:
    """A hook that POSTs its event as JSON to ``url`` (with httpx).

    The body is :meth:`HookEvent.to_dict`, or what ``payload(event)`` returns (a
    JSON-ready value: e.g. ``lambda e: {"text": f"{e.name} {e.state}"}`` for a chat
    webhook). ``headers`` are added to the request (an ``Authorization`` header, say).
    ``timeout``: seconds per request. A connection error, a timeout, a ``5xx`` or a
    ``429`` is retried ``retries`` times, waiting ``backoff`` seconds, doubling up to
    ``max_backoff``; another answer of ``4xx`` is not retried. When the event cannot be
    delivered, the hook raises :class:`WebhookError`, recorded on the run as a failed
    hook (the run's state is unchanged). The whole delivery, retries included, is
    bounded by the flow's or task's ``hook_timeout``.

    Messages name the webhook by its scheme and host only: paths of chat webhooks hold
    their secret.

    >>> flowcore.hooks.webhook("https://hooks.example.com/services/T0/B0/secret")
    webhook(https://hooks.example.com/…)
    """
    problems: list[str] = []
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"`url` must be an http:// or https:// address, got {safe_repr(url, 80)}")
    if headers is not None and not (
        isinstance(headers, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    ):
        problems.append("`headers` must be a mapping of str to str")
    for option, value in (("timeout", timeout), ("max_backoff", max_backoff)):
        if problem := _validate.seconds(option, value, optional=False):
            problems.append(problem)
    if problem := _validate.seconds("backoff", backoff, zero=True, optional=False):
        problems.append(problem)
    if problem := _validate.count("retries", retries, minimum=0, optional=False):
        problems.append(problem)
    given_payload: object = payload
    if given_payload is not None and not callable(given_payload):
        problems.append(f"`payload` must be a function of the event, got {safe_repr(payload, 80)}")
    if problems:
        raise ConfigurationError("invalid webhook: " + "; ".join(problems))
    return _Webhook(
        url,
        dict(headers or {}),
        float(timeout),
        retries,
        float(backoff),
        float(max_backoff),
        payload,
    )


def _shown_url(url: str) -> str:
    """``https://host[:port]/…``: the address without its path, query or credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    rest = "/…" if (parts.path not in ("", "/") or parts.query) else ""
    return safe_text(f"{parts.scheme}://{host}{port}{rest}")


def _reason(text: str) -> str:
    """The start of a response body, on one line, for a message."""
    line = " ".join(text.split())[:200]
    return f"({safe_repr(line)})" if line else "(empty body)"


def _subject(event: HookEvent) -> str:
    if event.task_run is not None:
        return f"task run {event.task_run.label} ({safe_text(event.task_run.name)!r})"
    return f"flow run {event.flow_run.id[:8]} ({safe_text(event.flow_run.name)!r})"
