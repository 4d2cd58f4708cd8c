"""Bad input at decoration and call time: clear errors that name the fix."""

from __future__ import annotations

from typing import Any

import pytest

import flowcore


def test_public_api_is_exactly_all() -> None:
    import pkgutil

    submodules = {m.name for m in pkgutil.iter_modules(flowcore.__path__)}
    public = {name for name in dir(flowcore) if not name.startswith("_")}
    assert public - submodules <= set(flowcore.__all__)
    for name in flowcore.__all__:
        assert hasattr(flowcore, name), name
    assert "flow" in flowcore.__all__ and callable(flowcore.flow)


def test_bare_and_configured_decorators() -> None:
    @flowcore.task
    async def a() -> None: ...

    @flowcore.task(retries=2, timeout=5, name="custom", tags=["io"])
    async def b() -> None: ...

    assert isinstance(a, flowcore.Task) and a.name == "a"
    assert b.name == "custom" and b.retry.retries == 2 and b.timeout == 5.0 and b.tags == {"io"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retries": -1}, "`retries` must be an int >= 0, got -1"),
        ({"retries": 1.5}, "`retries` must be an int >= 0"),
        ({"retries": True}, "`retries` must be an int >= 0"),
        ({"retry_delay": -2}, "`retry_delay` must be seconds >= 0"),
        ({"retry_delay": [1, "x"]}, "`retry_delay` list must hold numbers"),
        ({"timeout": 0}, "`timeout` must be a number of seconds > 0"),
        ({"timeout": "10"}, "`timeout` must be a number of seconds > 0"),
        ({"timeout": float("nan")}, "`timeout` must be a number of seconds > 0"),
        ({"retry_on": "ValueError"}, "`retry_on` must be an exception type"),
        ({"retry_on": int}, "`retry_on` must be an exception type"),
        ({"tags": "io"}, "`tags` must be an iterable of str"),
        ({"name": ""}, "`name` must be a non-empty str"),
        ({"retry": 3}, "`retry` must be a flowcore.RetryPolicy"),
    ],
)
def test_invalid_task_options_are_rejected_at_decoration(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(flowcore.ConfigurationError) as info:
        flowcore.task(**options)
    assert message in str(info.value)


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(flowcore.ConfigurationError) as info:
        flowcore.task(retries=-1, timeout=-1)
    assert "`retries`" in str(info.value) and "`timeout`" in str(info.value)


def test_non_callables_and_generators_are_refused() -> None:
    with pytest.raises(flowcore.ConfigurationError, match="decorates a function, got int"):
        flowcore.task(42)  # type: ignore[call-overload]

    def gen() -> Any:
        yield 1

    async def agen() -> Any:
        yield 1

    with pytest.raises(flowcore.ConfigurationError, match="generator"):
        flowcore.task(gen)
    with pytest.raises(flowcore.ConfigurationError, match="generator"):
        flowcore.flow(agen)


def test_flow_must_be_async() -> None:
    def sync_flow() -> None: ...

    with pytest.raises(flowcore.ConfigurationError, match="needs an `async def`"):
        flowcore.flow(sync_flow)  # type: ignore[arg-type]
    with pytest.raises(flowcore.ConfigurationError, match="`timeout`"):
        flowcore.flow(timeout=-5)


def test_run_given_a_coroutine_says_what_to_write() -> None:
    @flowcore.flow
    async def my_flow(x: int) -> int:
        return x

    with pytest.raises(flowcore.ConfigurationError, match=r"not flowcore.run\(my_flow\(...\)\)"):
        flowcore.run(my_flow(1))  # type: ignore[arg-type]


def test_run_given_a_plain_function() -> None:
    async def plain() -> None: ...

    with pytest.raises(
        flowcore.ConfigurationError, match=r"decorate the function with @flowcore\.flow"
    ):
        flowcore.run(plain)  # type: ignore[arg-type]


def test_flow_called_with_bad_arguments() -> None:
    @flowcore.flow
    async def f(x: int) -> int:
        return x

    with pytest.raises(flowcore.ConfigurationError, match="bad arguments"):
        flowcore.run(f, 1, 2)  # type: ignore[call-arg]


def test_unwritable_home_is_a_clear_error(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FLOWCORE_HOME", str(blocker / "home"))

    @flowcore.flow
    async def f() -> int:
        return 1

    with pytest.raises(flowcore.StoreUnavailable, match="FLOWCORE_HOME"):
        flowcore.run(f)


def test_engine_options_are_validated() -> None:
    with pytest.raises(flowcore.ConfigurationError, match="flush_interval"):
        flowcore.Engine("memory", flush_interval=0)
    with pytest.raises(flowcore.ConfigurationError, match="store"):
        flowcore.Engine(42)  # type: ignore[arg-type]


def test_trace_retention_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(flowcore.ConfigurationError, match="retention_days"):
        flowcore.Engine("memory", tracing=flowcore.Tracing(retention_days=-1))
    monkeypatch.setenv("FLOWCORE_TRACE_RETENTION_DAYS", "a week")
    with pytest.raises(flowcore.ConfigurationError, match="FLOWCORE_TRACE_RETENTION_DAYS"):
        flowcore.Engine("memory")
