"""A task as the engine runs it: the function, its options, and what is derived from them.

:class:`flowcore.Task` (what users decorate and call) is a :class:`TaskSpec`; the
engine reads only what is here. Everything a call would otherwise recompute is
worked out once, when the task is made: the signature, the positional
parameter names, the cache key maker, the task's own limit. The options the hot
path reads are plain attributes (one lookup each, not two through ``options``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Final

from ..cache import KeyMaker
from ..encoding import first_input_prefix
from ..limits import task_limit
from ..options import TaskOptions
from ..serializers import return_type

__all__ = ["TaskSpec"]

_UNSET: Final[Any] = object()


class TaskSpec:
    """A function and its :class:`~flowcore.options.TaskOptions`, ready to run."""

    def __init__(self, fn: Callable[..., Any], options: TaskOptions) -> None:
        self.fn: Callable[..., Any] = fn
        self.options = options
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


def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return inspect.Signature()
