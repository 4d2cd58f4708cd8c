"""Options as values: one spelling each, a change keeps what it does not name, old
spellings still work for a release and say the new one."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
import warnings
from typing import Any

import pytest

import flowcore
from flowcore import errors
from flowcore.options import OPTION_NAMES, TaskArgs, TaskOptions
from flowcore.testing import FakeClock

pytestmark = pytest.mark.anyio


# -- one value for a task's options ----------------------------------------------------------


def test_every_task_option_has_one_field_or_is_a_named_shortcut() -> None:
    fields = {f.name for f in dataclasses.fields(TaskOptions)}
    shortcuts = {"retries", "retry_delay", "retry_on", "cache_ttl"}
    assert set(OPTION_NAMES) == fields | shortcuts
    assert set(TaskArgs.__annotations__) == set(OPTION_NAMES)
    # The decorator and with_options take exactly these (and nothing is written twice).
    assert set(inspect.signature(flowcore.Task.with_options).parameters) == {"self", "changes"}


def test_with_options_keeps_what_it_does_not_name() -> None:
    @flowcore.task(
        retry=flowcore.http_retry(retries=2),
        timeout=5,
        tags=["api"],
        cache=flowcore.CachePolicy(ttl=60),
        concurrency=3,
    )
    async def fetch(url: str) -> str:
        return url

    more = fetch.with_options(retries=10)
    assert more.retry.retries == 10
    # Regression: the policy was rebuilt from retries/delay/retry_on only, so
    # http_retry()'s Retry-After handling (now its delay_hint) was silently dropped.
    assert more.retry.delay_hint is fetch.retry.delay_hint is not None
    assert more.retry.delay == fetch.retry.delay
    assert more.retry.retry_on is fetch.retry.retry_on
    assert (more.timeout, more.tags, more.cache, more.own_limit) == (
        fetch.timeout,
        fetch.tags,
        fetch.cache,
        fetch.own_limit,
    )
    assert fetch.retry.retries == 2  # the original is unchanged


async def test_with_options_retries_still_waits_what_retry_after_asks() -> None:
    class Throttled(Exception):
        pass

    def asked(exc: BaseException) -> float | None:
        return 7.0 if isinstance(exc, Throttled) else None

    calls = 0

    @flowcore.task(retry=flowcore.RetryPolicy(retries=1, delay=0.5, delay_hint=asked))
    async def busy() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Throttled("429")
        return "ok"

    clock = FakeClock()
    async with flowcore.Engine("memory", clock=clock, seed=0):
        assert await busy.with_options(retries=5)() == "ok"
    assert clock.sleeps == [7.0, 7.0]


def test_options_are_checked_when_changed_and_all_problems_are_reported() -> None:
    @flowcore.task
    async def step() -> None:
        pass

    with pytest.raises(flowcore.ConfigurationError) as info:
        step.with_options(timeout=-1, serializer="json", tags="api")
    message = str(info.value)
    assert "`timeout`" in message and "`serializer`" in message and "`tags`" in message
    with pytest.raises(flowcore.ConfigurationError, match="unknown options"):
        step.with_options(retrys=3)  # type: ignore[call-arg]
    with pytest.raises(flowcore.ConfigurationError, match="`record_inputs` must be True or False"):
        flowcore.task(record_inputs="no")  # type: ignore[call-overload]
    with pytest.raises(flowcore.ConfigurationError, match="either `retry=RetryPolicy"):
        flowcore.task(retry=flowcore.RetryPolicy(retries=1), retries=2)


def test_a_change_can_break_a_pair_of_options_and_is_refused() -> None:
    @flowcore.task(timeout=5, timeout_includes_wait=True)
    async def step() -> None:
        pass

    with pytest.raises(flowcore.ConfigurationError, match="needs a `timeout`"):
        step.with_options(timeout=None)


# -- one spelling per concept --------------------------------------------------------------


def test_limit_and_Limit_are_the_same_limit() -> None:
    # Regression: the class left burst=None (a burst of 1 at run time) while the
    # function filled a second's worth, and registering one then the other failed.
    assert flowcore.Limit("api", rate=10) == flowcore.limit("api", rate=10)
    assert flowcore.Limit("api", rate=10).burst == 10
    assert flowcore.Limit("api", rate=0.5).burst == 1
    assert flowcore.Limit("api", 3).burst is None  # no rate, no burst


async def test_a_Limit_and_a_limit_of_one_name_register_together() -> None:
    engine = flowcore.Engine("memory", limits=[flowcore.Limit("api", rate=1000)])
    async with engine, flowcore.limit("api", rate=1000):
        assert engine.limits.named("api") is not None


def test_every_exception_is_in_errors_and_importable_from_flowcore() -> None:
    exceptions = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    assert exceptions <= set(errors.__all__)
    assert exceptions <= set(flowcore.__all__)
    for name in exceptions - {"FlowcoreDeprecationWarning"}:
        assert issubclass(getattr(flowcore, name), flowcore.FlowcoreError), name
        assert name in (errors.__doc__ or ""), f"{name} is missing from the tree in errors"
        # The public spelling everywhere: tracebacks, pickles, recorded error types.
        assert getattr(flowcore, name).__module__ == "flowcore"


def test_an_exception_pickles_under_its_public_name() -> None:
    error = flowcore.ConfigurationError("bad")
    assert type(pickle.loads(pickle.dumps(error))) is flowcore.ConfigurationError


# -- old spellings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "new"),
    [
        (lambda: flowcore.task(cache=True, cache_ttl=5)(lambda: 1), "CachePolicy(ttl=...)"),
        (lambda: flowcore.flow(max_concurrency=3)(_flow), "concurrency=..."),
        (lambda: flowcore.http_retry(max_delay=9), "http_retry(max=...)"),
        (lambda: flowcore.Engine("memory", thread_limit=2), "sync_threads=..."),
        (lambda: flowcore.Engine("memory", tracer_provider=_Provider()), "Tracing(provider=...)"),
        (lambda: flowcore.Engine("memory", exporter=_Exporter()), "Tracing(exporter=...)"),
        (lambda: flowcore.Engine("memory", trace_parameters=True), "Tracing(parameters=...)"),
        (lambda: flowcore.Engine("memory", trace_retention_days=3), "Tracing(retention_days="),
    ],
)
def test_an_old_spelling_works_and_names_the_new_one(make: Any, new: str) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert make() is not None
    messages = [str(w.message) for w in seen if w.category is flowcore.FlowcoreDeprecationWarning]
    assert messages and any(new in m for m in messages), messages
    assert "next release" in messages[0]


def test_old_spellings_mean_what_they_meant() -> None:
    with pytest.warns(flowcore.FlowcoreDeprecationWarning):
        brief = flowcore.task(cache=True, cache_ttl=5)(lambda: 1)
    assert brief.cache is not None and brief.cache.ttl == 5
    with pytest.warns(flowcore.FlowcoreDeprecationWarning):
        bounded = flowcore.flow(max_concurrency=3)(_flow)
    assert bounded.concurrency == 3
    with pytest.warns(flowcore.FlowcoreDeprecationWarning):
        assert bounded.max_concurrency == 3
    with pytest.warns(flowcore.FlowcoreDeprecationWarning):
        policy = flowcore.http_retry(max_delay=9)
    assert isinstance(policy.delay, flowcore.Backoff) and policy.delay.max == 9


async def _flow() -> None:
    pass


class _Provider:
    def get_tracer(self, name: str) -> Any:
        raise AssertionError("not opened in this test")


class _Exporter:
    def export(self, spans: Any) -> Any:
        return None

    def shutdown(self) -> None:
        pass


# -- time through the engine clock ----------------------------------------------------------


async def test_a_cache_entry_expires_by_the_engine_clock_without_waiting() -> None:
    calls = 0

    @flowcore.task(cache=flowcore.CachePolicy(ttl=3600))
    async def lookup(x: int) -> int:
        nonlocal calls
        calls += 1
        return x

    clock = FakeClock(start=1_000_000.0)
    async with flowcore.Engine("memory", clock=clock):
        await lookup(1)
        clock.advance(3599)
        await lookup(1)
        assert calls == 1  # an hour less a second later: still a hit
        clock.advance(2)
        await lookup(1)
        assert calls == 2  # past the hour: computed again
