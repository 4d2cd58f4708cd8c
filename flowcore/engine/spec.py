"""A task as the engine runs it: the function, its options, and what is derived from them.

:class:`flowcore.Task` (what users decorate and call) is a :class:`TaskSpec`; the
engine reads only what is here. Everything a call would otherwise recompute is
worked out once, when the task is made: the signature, the positional
parameter names, the cache key maker, the task's own limit. The options the hot
path reads are plain attributes (one lookup each, not two through ``options``).
"""

from __future__ import annotations

import inspect
import logging
import string
from collections.abc import Callable, Mapping
from typing import Any, Final

from ..cache import KeyMaker
from ..encoding import first_input_prefix
from ..errors import ConfigurationError
from ..hooks import Hooks
from ..ids import safe_text
from ..limits import task_limit
from ..options import TaskOptions
from ..serializers import return_type
from .logs import print_scope, unwrapped

__all__ = ["TaskSpec"]

log = logging.getLogger("flowcore")

_UNSET: Final[Any] = object()


class TaskSpec:
    """A function and its :class:`~flowcore.options.TaskOptions`, ready to run."""

    def __init__(self, fn: Callable[..., Any], options: TaskOptions) -> None:
        #: The user's plain function (for unit tests of its logic: ``task.fn(x)``).
        self.fn: Callable[..., Any] = unwrapped(fn)
        #: What the engine calls: ``fn``, or with ``log_prints`` set, a wrapper that
        #: sets where ``print`` goes during the call (see ``engine.logs``).
        self.call: Callable[..., Any] = print_scope(self.fn, options.log_prints)
        self.options = options
        self.log_prints = options.log_prints
        self.name: str = options.name or getattr(fn, "__name__", None) or type(fn).__name__
        self.retry = options.retry
        self.timeout = options.timeout
        self.timeout_includes_wait = options.timeout_includes_wait
        self.tags = options.tags
        self.record_inputs = options.record_inputs
        self.cache = options.cache
        self.serializer = options.serializer
        self.persist_result = options.persist_result
        self.executor = options.executor
        #: The tags as recorded on each task run (one shared, sorted list), or None.
        self.tag_list: list[str] | None = sorted(options.tags) if options.tags else None
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - an instance with an async __call__
        )
        self.signature = _signature(fn)
        self.param_names = tuple(
            p.name
            for p in self.signature.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        )
        self.first_input = first_input_prefix(self.param_names)
        #: The limit made from ``concurrency`` / ``rate`` (``None`` without them).
        self.own_limit = (
            task_limit(self.name, options.concurrency, options.rate, options.burst)
            if options.concurrency is not None or options.rate is not None
            else None
        )
        self.keys = KeyMaker(fn, self.name, options.cache) if options.cache is not None else None
        # OpenTelemetry code.* attributes of the task's spans.
        self.code_function: str = getattr(fn, "__qualname__", self.name)
        self.code_namespace: str = getattr(fn, "__module__", None) or ""
        self._return_type: Any = _UNSET
        #: Names each call (``task_run_name``), or None: a task without one pays nothing.
        self.run_namer = _run_namer(self.name, options.task_run_name, self.signature)
        #: The task's state hooks, or None: a task without any pays one check per run.
        self.hooks: Hooks | None = options.hooks or None

    @property
    def return_type(self) -> Any:
        """The return annotation, resolved on first use (it may name types defined later)."""
        if self._return_type is _UNSET:
            self._return_type = return_type(self.fn)
        return self._return_type

    @property
    def concurrency(self) -> int | None:
        return self.options.concurrency

    @property
    def rate(self) -> float | None:
        return self.options.rate

    @property
    def burst(self) -> int | None:
        return self.options.burst


RunNamer = Callable[[tuple[Any, ...], dict[str, Any]], str | None]


def _run_namer(
    task_name: str,
    run_name: str | Callable[[Mapping[str, Any]], str] | None,
    signature: inspect.Signature,
) -> RunNamer | None:
    """How to name one call: ``None`` without ``task_run_name``; a template is checked now,
    against the parameters, so a typo fails at decoration, not at the first call."""
    if run_name is None:
        return None
    fields = set()
    if isinstance(run_name, str):
        for _, field, _, _ in string.Formatter().parse(run_name):
            if field is not None:
                fields.add(field.split(".", 1)[0].split("[", 1)[0])
        unknown = sorted(fields - set(signature.parameters))
        if unknown or "" in fields:
            raise ConfigurationError(
                f"invalid options for task {task_name!r}: `task_run_name` {run_name!r} names "
                f"{', '.join(map(repr, unknown)) or 'a field by position'}, which is not a "
                f"parameter of {task_name}{signature}; use the parameters' names, e.g. "
                f"'{task_name}-{{{next(iter(signature.parameters), 'x')}}}'"
            )
        if not fields:
            return lambda args, kwargs: run_name
    template = run_name

    def name(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        try:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments
            text = (
                template.format(**arguments) if isinstance(template, str) else template(arguments)
            )
            return safe_text(str(text))[:500]
        except Exception as exc:  # a bad call, a name function that failed: never the task
            log.warning("flowcore: task %r could not name a call (%s)", task_name, exc)
            return None

    return name


def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return inspect.Signature()
