"""Retries that understand HTTP.

``flowcore.http_retry()`` is a :class:`~flowcore.RetryPolicy` for tasks that
call HTTP APIs (with httpx, or anything raising ``httpx.HTTPStatusError``):

- retried: ``429 Too Many Requests``, any ``5xx``, and transport errors
  (connection refused or reset, timeouts);
- never retried: other ``4xx`` (a bad request stays bad), unless listed in
  ``also_retry`` (e.g. ``{408, 409}``);
- waits: the server's ``Retry-After`` (seconds, or an HTTP date) when it sends
  one, capped at ``max``; otherwise exponential backoff with jitter.

Usable by any task: ``@flowcore.task(retry=flowcore.http_retry(retries=5))``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .engine.core import _run_var
from .errors import ConfigurationError, deprecated
from .retry import Backoff, RetryPolicy

if TYPE_CHECKING:
    import httpx

__all__ = ["http_client", "http_retry", "is_retryable_http_error", "retry_after"]

_RETRYABLE_STATUS = frozenset({429})


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def is_retryable_http_error(exc: BaseException, also_retry: Iterable[int] = ()) -> bool:
    """Whether another attempt may succeed: 429, 5xx, transport errors; not other 4xx."""
    import httpx  # imported when first needed: `import flowcore` stays light

    if isinstance(exc, httpx.TransportError):
        return True
    status = _status(exc)
    if status is None:
        return isinstance(exc, ConnectionError | TimeoutError)
    return status in _RETRYABLE_STATUS or status >= 500 or status in set(also_retry)


def retry_after(exc: BaseException, now: float | None = None) -> float | None:
    """Seconds the server asked to wait (``Retry-After``: seconds or an HTTP date), if any."""
    response = getattr(exc, "response", None)
    headers: Any = getattr(response, "headers", None)
    if headers is None:
        return None
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    import email.utils  # an HTTP date: rare, and the email package is some 5 ms to import

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def http_retry(
    *,
    retries: int = 5,
    base: float = 0.5,
    factor: float = 2.0,
    max: float = 60.0,
    jitter: float = 1.0,
    also_retry: Iterable[int] = (),
    max_delay: float | None = None,
) -> RetryPolicy:
    """A retry policy for HTTP calls (see the module docstring).

    ``base``, ``factor``, ``max`` and ``jitter`` are the :class:`~flowcore.Backoff`
    between attempts; ``max`` also caps a ``Retry-After``. (``max_delay`` is the
    deprecated spelling of ``max``.)

    >>> policy = flowcore.http_retry(retries=3, max=30)
    >>> policy.retries, policy.delay.max
    (3, 30)
    """
    if max_delay is not None:
        deprecated("http_retry(max_delay=...)", "http_retry(max=...)", stacklevel=2)
        max = max_delay
    codes = frozenset(also_retry)
    return RetryPolicy(
        retries=retries,
        delay=Backoff(base=base, factor=factor, max=max, jitter=jitter),
        retry_on=lambda exc: is_retryable_http_error(exc, codes),
        delay_hint=retry_after,
    )


#: Connections of a run's shared client when its flow sets no ``max_concurrency``.
DEFAULT_POOL = 100


def http_client() -> httpx.AsyncClient:
    """The current flow run's shared ``httpx.AsyncClient``, made on first use.

    One client per run means one connection pool, reused by every task of the
    run (``gather``, ``submit``, ``map``, nested tasks); it is sized from the
    flow's ``max_concurrency``, else from the largest named limit's concurrency
    (at least 100 connections), so requests never queue in the pool while holding
    a limit's slot; and it is closed when the run ends, however it ends. Call it
    inside a flow or a task::

        response = await flowcore.http_client().get(url)
    """
    ctx = _run_var.get()
    if ctx is None:
        raise ConfigurationError(
            "flowcore.http_client() was called outside a flow run; call it in a flow or a "
            "task, or make your own httpx.AsyncClient outside flows"
        )
    pool = ctx.engine.limits.pool_size(ctx.gate, DEFAULT_POOL)

    def make() -> httpx.AsyncClient:
        import httpx  # imported when first needed: `import flowcore` stays light

        return httpx.AsyncClient(
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
            timeout=httpx.Timeout(30.0),
        )

    return ctx.resource("http", make, _close_client)


async def _close_client(client: httpx.AsyncClient) -> None:
    await client.aclose()
