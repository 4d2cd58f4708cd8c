"""Retry policies: how many attempts, how long to wait between them, and which errors count.

Policies are validated value objects, checked when the task is decorated so a
typo fails at import time rather than at three in the morning on the first
failure.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from ._validate import is_number as _is_number
from .errors import ConfigurationError, NonRetryable

__all__ = ["Backoff", "RetryPolicy", "backoff"]

RetryOn: TypeAlias = (
    type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
)
#: Seconds an error itself asks to wait before the next attempt (``None``: no opinion).
DelayHint: TypeAlias = Callable[[BaseException], "float | None"]
Delay: TypeAlias = "float | int | Sequence[float | int] | Backoff"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff, capped, with optional jitter.

    The wait before retry ``n`` (0-based) is ``min(max, base * factor**n)``,
    then shortened by a random fraction of at most ``jitter`` of itself:
    ``jitter=0`` waits exactly, ``jitter=1`` is "full jitter" (uniform between
    0 and the capped delay), which spreads retries of many tasks that failed
    together so they do not hit a recovering service all at once.

    >>> import random
    >>> wait = flowcore.Backoff(base=0.2, factor=2, max=5)
    >>> [wait.delay(n, random.Random(0)) for n in range(6)]
    [0.2, 0.4, 0.8, 1.6, 3.2, 5]
    """

    base: float = 1.0
    factor: float = 2.0
    max: float = 60.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if not _is_number(self.base) or self.base < 0:
            problems.append(f"`base` must be a number of seconds >= 0, got {self.base!r}")
        if not _is_number(self.factor) or self.factor < 1:
            problems.append(f"`factor` must be a number >= 1, got {self.factor!r}")
        if not _is_number(self.max) or self.max < 0:
            problems.append(f"`max` must be a number of seconds >= 0, got {self.max!r}")
        if not _is_number(self.jitter) or not 0 <= self.jitter <= 1:
            problems.append(f"`jitter` must be a fraction between 0 and 1, got {self.jitter!r}")
        if problems:
            raise ConfigurationError("invalid backoff: " + "; ".join(problems))

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first retry)."""
        # factor**retry overflows for large retry counts; the cap makes the exact value moot.
        try:
            raw = self.base * self.factor**retry
        except OverflowError:
            raw = math.inf
        capped = min(self.max, raw)
        if self.jitter:
            capped -= capped * self.jitter * rng.random()
        return capped


def backoff(
    *, base: float = 1.0, factor: float = 2.0, max: float = 60.0, jitter: float = 0.0
) -> Backoff:
    """Shorthand for :class:`Backoff`, for ``retry_delay=flowcore.backoff(...)``."""
    return Backoff(base=base, factor=factor, max=max, jitter=jitter)


def _default_retry_on(exc: BaseException) -> bool:
    return isinstance(exc, Exception)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed task attempt is retried.

    ``retries``: how many more attempts after the first (0 = no retry).
    ``delay``: seconds before each retry: a number, a list (one per retry, the
    last repeating), or a :class:`Backoff`.
    ``retry_on``: an exception type, a tuple of them, or a predicate
    ``(exc) -> bool``; other errors fail the task at once. A
    :class:`~flowcore.NonRetryable` raised by the task is never retried.
    ``delay_hint``: ``(exc) -> seconds | None``, what the error itself asks to
    wait (an HTTP ``Retry-After``: see :func:`flowcore.http_retry`); when it
    answers, that wait replaces the computed one, capped by the backoff's ``max``.

    >>> import random
    >>> policy = flowcore.RetryPolicy(retries=3, delay=[1, 5])
    >>> [policy.delay_for(n, random.Random(0)) for n in range(3)]
    [1.0, 5.0, 5.0]
    """

    retries: int = 0
    delay: float | Sequence[float] | Backoff = 0.0
    retry_on: RetryOn | None = None
    delay_hint: DelayHint | None = None
    _predicate: Callable[[BaseException], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = validate_retry_options(self.retries, self.delay, self.retry_on)
        hint: object = self.delay_hint
        if hint is not None and not callable(hint):
            problems.append(
                f"`delay_hint` must be a function (exc) -> seconds or None, got {hint!r}"
            )
        if problems:
            raise ConfigurationError("invalid retry policy: " + "; ".join(problems))
        if isinstance(self.delay, list):
            object.__setattr__(self, "delay", tuple(self.delay))
        object.__setattr__(self, "_predicate", _make_predicate(self.retry_on))

    def should_retry(self, exc: BaseException, retries_done: int) -> bool:
        """Whether an attempt that raised ``exc`` gets another try."""
        if retries_done >= self.retries or isinstance(exc, NonRetryable):
            return False
        return self._predicate(exc)

    def delay_for(self, retry: int, rng: random.Random, exc: BaseException | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based), after error ``exc``."""
        d = self.delay
        if isinstance(d, Backoff):
            delay = d.delay(retry, rng)
        elif isinstance(d, tuple):
            delay = float(d[min(retry, len(d) - 1)]) if d else 0.0
        else:
            delay = float(d)  # type: ignore[arg-type]
        if self.delay_hint is not None and exc is not None:
            asked = self.delay_hint(exc)
            if asked is not None:
                if isinstance(d, Backoff):
                    cap = d.max
                    if d.jitter:
                        # Never sooner than asked, but spread out: callers held back together
                        # must not all come back at the same instant and be throttled again.
                        asked += asked * min(d.jitter, 0.2) * rng.random()  # at most 20% later
                else:
                    cap = max(delay, asked)
                delay = min(asked, cap)
        return delay


def _make_predicate(retry_on: RetryOn | None) -> Callable[[BaseException], bool]:
    if retry_on is None:
        return _default_retry_on
    if isinstance(retry_on, type | tuple):
        types = retry_on
        return lambda exc: isinstance(exc, types)
    return retry_on


def validate_retry_options(retries: object, delay: object, retry_on: object) -> list[str]:
    """Every problem with these options, so one error can report them all."""
    problems = []
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        problems.append(f"`retries` must be an int >= 0, got {retries!r}")
    if isinstance(delay, Backoff):
        pass
    elif isinstance(delay, list | tuple):
        bad = [d for d in delay if not _is_number(d) or d < 0]
        if bad:
            problems.append(
                f"`retry_delay` list must hold numbers of seconds >= 0, got {bad[0]!r} in it"
            )
    elif not _is_number(delay) or delay < 0:  # type: ignore[operator]
        problems.append(
            "`retry_delay` must be seconds >= 0, a list of them, or flowcore.backoff(...), "
            f"got {delay!r}"
        )
    if retry_on is not None:
        ok = (
            (isinstance(retry_on, type) and issubclass(retry_on, BaseException))
            or (
                isinstance(retry_on, tuple)
                and all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on)
            )
            or (callable(retry_on) and not isinstance(retry_on, type))
        )
        if not ok:
            problems.append(
                "`retry_on` must be an exception type, a tuple of them, or a function "
                f"(exc) -> bool, got {retry_on!r}"
            )
    return problems
