"""Run logs: ``logging`` records and printed lines made inside a run, kept with the run.

How lines are captured, and why this way:

- ``logging``: while an engine is open, the *log record factory* is wrapped
  (``logging.setLogRecordFactory``; installed when the first engine opens, the
  previous factory put back when the last one closes). Every record any logger
  makes passes through it, whatever handlers, ``propagate`` flags and filters
  the application set up, and the wrapper reads one context variable (the
  current run) and, in a run, queues the line for that run's engine. A handler
  on the root logger was the other way, and it would change logging outside
  runs: a root handler makes ``logging.basicConfig()`` do nothing, and stops
  ``logging.lastResort`` from printing warnings of an application that
  configured no logging. The factory leaves both as they were. A record is only
  made when its logger's level lets it through, so capture follows the
  application's logging levels; :func:`flowcore.get_run_logger` records at
  ``Logs.level`` whatever they are.
- ``print``: a task or flow with ``log_prints=True`` marks its context, and
  while any such call runs, ``sys.stdout`` is a router that sends the writes of
  marked contexts to the run's log, a line at a time, at INFO, and every other
  write to the stream it replaced. Outside such calls ``sys.stdout`` is left
  alone.

Lines go into a queue of the engine's writer (a deque: sync tasks log from
worker threads) and are written with the next batch. Each flow run keeps at
most ``Logs.max_lines`` lines and ``Logs.max_bytes`` bytes of text: the counts
are per run, under a lock, and the first line over the limit starts dropping;
when the run ends, one line says how many were dropped.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, Final, Protocol, TextIO, TypeVar, cast

from .._current import current_task_run
from ..hooks import HOOKS_LOGGER
from ..ids import error_name, safe_repr, safe_str, safe_text
from ..options import Logs
from ..records import LogRecord, TaskRunRecord

__all__ = [
    "PRINT_LOGGER",
    "RUN_LOGGER",
    "EngineLogs",
    "RunLog",
    "RunLogger",
    "install",
    "print_scope",
    "uninstall",
    "unwrapped",
]

#: The logger name of :func:`flowcore.get_run_logger`'s lines.
RUN_LOGGER: Final = "flowcore.run"
#: The logger name recorded for printed lines.
PRINT_LOGGER: Final = "print"
#: Loggers whose records the capture leaves alone: their lines are kept another way.
_OWN_LOGGERS: Final = frozenset((RUN_LOGGER, HOOKS_LOGGER))

_F = TypeVar("_F", bound=Callable[..., Any])


class EngineLogs:
    """What the runs of one engine share: the options, the writer's queue, the lock
    their counts are kept under, and where a full log asks to be closed."""

    __slots__ = ("closers", "level", "lock", "max_bytes", "max_lines", "queue")

    def __init__(
        self,
        options: Logs,
        queue: deque[LogRecord],
        closers: dict[str, Callable[[], None]],
    ) -> None:
        self.level = options.levelno
        self.max_lines = options.max_lines
        self.max_bytes = options.max_bytes
        #: The writer's queue of lines (``Recorder.logs``).
        self.queue = queue
        #: Logs that dropped lines, by run id: the writer calls each when its run ends
        #: (``Recorder.truncated``), which queues the line saying what was dropped.
        self.closers = closers
        self.lock = threading.Lock()


class RunLog:
    """The log of one flow run: its counts against the limits of :class:`~flowcore.Logs`."""

    __slots__ = ("_engine", "dropped", "dropped_bytes", "ended", "level", "lines", "run_id", "size")

    def __init__(self, run_id: str, engine: EngineLogs) -> None:
        self.run_id = run_id
        self._engine = engine
        #: Lines below this level are not kept.
        self.level = engine.level
        self.lines = 0
        self.size = 0
        #: Lines (and their bytes) not kept since the limit was reached; -1 before.
        self.dropped = -1
        self.dropped_bytes = 0
        #: The line saying what was dropped was queued (the run ended).
        self.ended = False

    @property
    def prints(self) -> bool:
        """Whether printed lines (INFO) are kept."""
        return self.level <= logging.INFO

    def take(self, record: logging.LogRecord, task: TaskRunRecord | None) -> None:
        """Keep ``record`` (made in task run ``task``, or in the flow's body) if its level
        is kept, formatted as a handler would: the message, then any traceback."""
        if record.levelno < self.level:
            return
        self.add(task, record.levelno, record.name, _message(record), record.created)

    def add(
        self, task: TaskRunRecord | None, level: int, logger: str, message: str, when: float
    ) -> None:
        """Queue one line, unless the run's limits are reached (then it is counted)."""
        if message.isascii():
            size = len(message)
        else:
            try:
                size = len(message.encode("utf-8"))
            except UnicodeEncodeError:  # lone surrogates: recorded escaped
                message = safe_text(message)
                size = len(message.encode("utf-8"))
        engine = self._engine
        with engine.lock:
            if self.dropped < 0:
                if self.lines < engine.max_lines and self.size + size <= engine.max_bytes:
                    self.lines += 1
                    self.size += size
                    engine.queue.append(
                        LogRecord(
                            self.run_id,
                            None if task is None else task.seq,
                            None if task is None else task.name,
                            when,
                            level,
                            logger,
                            message,
                        )
                    )
                    return
                self._reach_limit(task, level, logger, message, when, size)
                return
            self.dropped += 1
            self.dropped_bytes += size

    def _reach_limit(
        self,
        task: TaskRunRecord | None,
        level: int,
        logger: str,
        message: str,
        when: float,
        size: int,
    ) -> None:
        """The first line over a limit (under the lock): from here on lines are dropped.
        A line too long for the bytes left keeps its start, so one huge line does not
        leave the log empty."""
        engine = self._engine
        self.dropped, self.dropped_bytes = 1, size
        room = engine.max_bytes - self.size
        if self.lines < engine.max_lines and room > 0:
            kept = message.encode("utf-8")[:room].decode("utf-8", "ignore")
            kept_size = len(kept.encode("utf-8"))
            self.lines += 1
            self.size += kept_size
            self.dropped, self.dropped_bytes = 0, 0
            engine.queue.append(
                LogRecord(
                    self.run_id,
                    None if task is None else task.seq,
                    None if task is None else task.name,
                    when,
                    level,
                    logger,
                    f"{kept} [cut: {size - kept_size:,} more bytes]",
                )
            )
        engine.closers[self.run_id] = self.close

    def close(self) -> None:
        """Queue the line saying what was dropped (once; the writer calls this when the
        run ends). Lines dropped after it (a sync task's thread still going after its
        run ended) are not counted in it."""
        engine = self._engine
        with engine.lock:
            if self.ended or self.dropped < 0:
                return
            self.ended = True
            dropped = (
                f"{self.dropped:,} later lines ({self.dropped_bytes:,} bytes) were dropped"
                if self.dropped
                else "its last line was cut"
            )
            engine.queue.append(
                LogRecord(
                    self.run_id,
                    None,
                    None,
                    time.time(),
                    logging.WARNING,
                    "flowcore",
                    f"flowcore: this run's log reached its limit of {engine.max_lines:,} lines "
                    f"or {engine.max_bytes:,} bytes: {dropped}. Keep more with "
                    "Engine(logs=flowcore.Logs(max_lines=..., max_bytes=...))",
                )
            )


def _message(record: logging.LogRecord) -> str:
    """A record's text as a handler would show it: the message, its traceback, its stack.
    Never raises: a message whose formatting fails is described instead."""
    try:
        text = record.getMessage()
    except Exception as exc:
        text = (
            f"<unprintable log message {safe_repr(record.msg, 300)} % "
            f"{safe_repr(record.args, 300)}: {error_name(exc)}: {safe_str(exc)[:300]}>"
        )
    exc_info = record.exc_info
    if exc_info and exc_info[0] is not None:
        try:
            text += "\n" + "".join(traceback.format_exception(*exc_info)).rstrip("\n")
        except Exception as exc:  # a chain of causes too deep to format, say
            text += f"\n(the traceback could not be formatted: {error_name(exc)})"
    if record.stack_info:
        text += "\n" + record.stack_info
    return text


# -- capturing logging -----------------------------------------------------------------------


class _InRun(Protocol):
    """What capture needs of the current run (``flowcore.engine.core.RunContext``)."""

    @property
    def log(self) -> RunLog | None: ...


_Factory = Callable[..., logging.LogRecord]


def _capture_factory(previous: _Factory, runs: ContextVar[Any]) -> _Factory:
    """The log record factory while engines are open: the previous factory's record,
    and, in a run, the record queued for the run's log. A closure with logging's own
    signature: outside runs it costs a call and one context variable read (0.05 µs)."""
    active = [True]
    current_run: ContextVar[_InRun | None] = runs

    def factory(
        name: Any,
        level: Any,
        fn: Any,
        lno: Any,
        msg: Any,
        args: Any,
        exc_info: Any,
        func: Any = None,
        sinfo: Any = None,
        **kwargs: Any,
    ) -> logging.LogRecord:
        if kwargs:
            record = previous(name, level, fn, lno, msg, args, exc_info, func, sinfo, **kwargs)
        else:
            record = previous(name, level, fn, lno, msg, args, exc_info, func, sinfo)
        run = current_run.get()  # outside runs, the only cost
        if run is not None and active[0]:
            log = run.log
            # get_run_logger()'s lines are taken by the RunLogger itself (bound to its run),
            # a failed hook's by the hook runner (at ERROR, with the hook's task run);
            # logging.makeLogRecord() makes a record with no name and fills it in later.
            if log is not None and name is not None and name not in _OWN_LOGGERS:
                try:
                    log.take(record, current_task_run.get())
                except Exception:  # never the application's logging call
                    pass
        return record

    setattr(factory, _CAPTURE, (previous, active))
    return factory


#: The attribute holding a capturing factory's (previous factory, [active]).
_CAPTURE: Final = "__flowcore_capture__"
_lock = threading.Lock()
_users = 0
_capture: _Factory | None = None
#: The engine's current-run variable, once an engine opened (read by the print router).
_runs: ContextVar[_InRun | None] | None = None


def install(runs: ContextVar[Any]) -> None:
    """Capture ``logging`` in runs (``runs``: the current-run variable), from now until
    as many :func:`uninstall` calls: an engine calls it when it opens."""
    global _users, _capture, _runs
    with _lock:
        _users += 1
        _runs = runs
        if _users > 1:
            return
        current = logging.getLogRecordFactory()
        ours = getattr(current, _CAPTURE, None)
        if ours is not None:  # left in place by the last uninstall: on again
            ours[1][0] = True
            _capture = current
        else:
            _capture = _capture_factory(current, runs)
            logging.setLogRecordFactory(_capture)


def uninstall() -> None:
    """Undo one :func:`install`; the last one puts the previous record factory back.

    If another library wrapped the factory since, ours stays in its chain, inactive
    (it only passes records on), so the other's is not undone.
    """
    global _users, _capture
    with _lock:
        _users -= 1
        if _users > 0 or _capture is None:
            return
        capture, _capture = _capture, None
        previous, active = getattr(capture, _CAPTURE)
        active[0] = False
        if logging.getLogRecordFactory() is capture:
            logging.setLogRecordFactory(previous)


class RunLogger(logging.LoggerAdapter[logging.Logger]):
    """:func:`flowcore.get_run_logger`'s logger: bound to the run (and task run) it was
    made in, it keeps every line at the engine's ``Logs.level`` in that run's log,
    whatever the levels of the ``logging`` configuration. The lines also go to the
    ``flowcore.run`` logger's handlers when its level lets them through, as any
    logger's would; records carry ``flowcore_run_id`` and ``flowcore_task_seq``.
    """

    def __init__(self, log: RunLog | None, task: TaskRunRecord | None, run_id: str) -> None:
        super().__init__(
            logging.getLogger(RUN_LOGGER),
            {"flowcore_run_id": run_id, "flowcore_task_seq": None if task is None else task.seq},
        )
        self._run_log = log
        self._run_task = task

    def isEnabledFor(self, level: int) -> bool:
        log = self._run_log
        return (log is not None and level >= log.level) or self.logger.isEnabledFor(level)

    def log(
        self,
        level: int,
        msg: object,
        *args: object,
        exc_info: Any = None,
        stack_info: bool = False,
        stacklevel: int = 1,
        extra: Mapping[str, object] | None = None,
        **kwargs: object,
    ) -> None:
        if not isinstance(level, int):
            raise TypeError(f"the level must be an int, got {level!r}")
        logger = self.logger
        shown = logger.isEnabledFor(level)
        log = self._run_log
        kept = log is not None and level >= log.level
        if not (shown or kept):
            return
        try:
            # +1: this frame (frames of the logging module itself are skipped).
            fn, lno, func, sinfo = logger.findCaller(stack_info, stacklevel + 1)
        except ValueError:  # pragma: no cover - interpreters without frames
            fn, lno, func, sinfo = "(unknown file)", 0, "(unknown function)", None
        if exc_info:
            if isinstance(exc_info, BaseException):
                exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
            elif not isinstance(exc_info, tuple):
                exc_info = sys.exc_info()
        merged = dict(self.extra or {})
        if extra:
            merged.update(extra)
        record = logger.makeRecord(
            logger.name, level, fn, lno, msg, args, exc_info, func, merged, sinfo
        )
        if kept and log is not None:
            log.take(record, self._run_task)
        if shown:
            logger.handle(record)


# -- capturing print ---------------------------------------------------------------------------

#: Whether ``print`` in this context goes to the run's log (``log_prints``).
_prints: ContextVar[bool] = ContextVar("flowcore_log_prints", default=False)


class _PrintRouter:
    """``sys.stdout`` while ``log_prints`` calls run: writes of their contexts go to the
    run's log, a line at a time; every other write to the stream it replaced."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self._local = threading.local()  # each thread's unfinished line

    def write(self, text: str) -> int:
        if _prints.get():
            runs = _runs
            run = None if runs is None else runs.get()
            log = None if run is None else run.log
            if log is not None and log.prints:
                self._take(text, log)
                return len(text)
        stream = self.stream
        if stream is None:  # no stdout at all (pythonw): print writes nothing
            return len(text)
        return stream.write(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.stream is not None:
            self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def _parts(self) -> list[str]:
        parts: list[str] | None = getattr(self._local, "parts", None)
        if parts is None:
            parts = self._local.parts = []
        return parts

    def _take(self, text: str, log: RunLog) -> None:
        parts = self._parts()
        if "\n" not in text:
            if text:
                parts.append(text)
            return
        if parts:
            text = "".join(parts) + text
            parts.clear()
        lines = text.split("\n")
        rest = lines.pop()
        task = current_task_run.get()
        now = time.time()
        for line in lines:
            log.add(task, logging.INFO, PRINT_LOGGER, line.removesuffix("\r"), now)
        if rest:
            parts.append(rest)

    def end_line(self) -> None:
        """Keep this thread's unfinished line, if any (a ``log_prints`` call ends)."""
        parts: list[str] | None = getattr(self._local, "parts", None)
        if not parts:
            return
        text = "".join(parts)
        parts.clear()
        runs = _runs
        run = None if runs is None else runs.get()
        log = None if run is None else run.log
        if log is not None:
            log.add(current_task_run.get(), logging.INFO, PRINT_LOGGER, text, time.time())


_router_lock = threading.Lock()
_router_users = 0
_router: _PrintRouter | None = None


def _enter_prints() -> None:
    global _router_users, _router
    with _router_lock:
        _router_users += 1
        if _router_users == 1:
            current = sys.stdout
            _router = current if isinstance(current, _PrintRouter) else _PrintRouter(current)
            sys.stdout = cast(TextIO, _router)


def _leave_prints() -> None:
    global _router_users, _router
    with _router_lock:
        router = _router
        if router is not None:
            router.end_line()
        _router_users -= 1
        if _router_users > 0 or router is None:
            return
        _router = None
        if sys.stdout is cast(TextIO, router):
            sys.stdout = cast(TextIO, router.stream)
        # Replaced meanwhile (and not put back): theirs stays; ours passes writes on.


#: The attribute naming the user's function on a :func:`print_scope` wrapper.
_PLAIN: Final = "__flowcore_plain__"


def unwrapped(fn: _F) -> _F:
    """The user's function behind a :func:`print_scope` wrapper (or ``fn`` itself)."""
    plain: _F = getattr(fn, _PLAIN, fn)
    return plain


def print_scope(fn: _F, log_prints: bool | None) -> _F:
    """``fn``, calling which sets whether ``print`` goes to the run's log: a wrapper
    for ``True`` and ``False``, the function itself for ``None`` (as its caller)."""
    plain = unwrapped(fn)
    if log_prints is None:
        return plain
    on = bool(log_prints)
    if inspect.iscoroutinefunction(plain) or inspect.iscoroutinefunction(
        getattr(plain, "__call__", None)  # noqa: B004 - an instance with an async __call__
    ):

        @functools.wraps(plain)
        async def scoped_async(*args: Any, **kwargs: Any) -> Any:
            token = _prints.set(on)
            if on:
                _enter_prints()
            try:
                return await plain(*args, **kwargs)
            finally:
                if on:
                    _leave_prints()
                _prints.reset(token)

        wrapper: Any = scoped_async
    else:

        @functools.wraps(plain)
        def scoped(*args: Any, **kwargs: Any) -> Any:
            token = _prints.set(on)
            if on:
                _enter_prints()
            try:
                return plain(*args, **kwargs)
            finally:
                if on:
                    _leave_prints()
                _prints.reset(token)

        wrapper = scoped
    setattr(wrapper, _PLAIN, plain)
    result: _F = wrapper
    return result
