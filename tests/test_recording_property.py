"""Recording never fails, whatever a run holds, and never changes what the flow sees.

A property-based test throws arbitrary text (lone surrogates, as ``os.fsdecode``
makes from a file name that is not UTF-8, and control characters), numbers (NaN,
ints past 64 bits and past the str() digit limit), nested values (100,000 deep)
and exceptions (whose ``__str__`` or ``__repr__`` raise) at every recorded
field a run has: flow and task names, parameters, inputs, results, history
notes, error types, messages and tracebacks, span attributes. Through real
flows on the SQLite store, it checks that the run and its task runs are
recorded and read back, that the flow's own exception reaches its caller
unchanged, and that the engine goes on recording.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import flowcore
from flowcore import State
from flowcore.encoding import decode_inputs

#: A file name that is not UTF-8, as Python gives it: "caf\udce9.csv".
NOT_UTF8 = os.fsdecode(b"caf\xe9.csv")


class Deep(list[Any]):
    """A list nested 100,000 deep (a repr that says so: the real one cannot be made)."""

    def __repr__(self) -> str:
        return "Deep(100_000)"


def _deep(depth: int) -> Deep:
    outer = Deep()
    inner: list[Any] = outer
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return outer


DEEP = _deep(100_000)


class BrokenRepr:
    """A value whose repr raises."""

    def __repr__(self) -> str:
        raise RuntimeError("repr broke")


class BrokenStr(Exception):
    """An exception whose __str__ raises."""

    def __str__(self) -> str:
        raise RuntimeError("str broke")


class BrokenBoth(Exception):
    """An exception whose __str__ and __repr__ both raise."""

    def __str__(self) -> str:
        raise RuntimeError("str broke")

    def __repr__(self) -> str:
        raise RuntimeError("repr broke")


class Surrogate(Exception):
    """Its message is text with lone surrogates, whatever it was given."""

    def __str__(self) -> str:
        return f"{NOT_UTF8}: {self.args[0]}"


# Every character: lone surrogates (Cs) and control characters (Cc) included.
texts = st.text(st.characters(exclude_categories=()), max_size=40) | st.sampled_from(
    [NOT_UTF8, "\ud800", "\x00", "\udcff\x1b[31m", "é"]
)


def huge() -> int:
    """An int past the str() digit limit (its repr raises)."""
    return 10**5000


names = texts.map(lambda text: f"n{text}")  # a name is never empty
numbers = (
    st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([2**64, -(2**63) - 1, float("nan")])
    | st.builds(huge)
)
scalars = texts | numbers | st.none() | st.booleans() | st.binary(max_size=20)
values = (
    st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.tuples(inner, inner)
            | st.dictionaries(texts, inner, max_size=4)
        ),
        max_leaves=12,
    )
    | st.just(DEEP)
    | st.builds(BrokenRepr)
)


def _error(kind: str, text: str) -> BaseException:
    if kind == "plain":
        return ValueError(text)
    if kind == "broken str":
        return BrokenStr(text)
    if kind == "broken str and repr":
        return BrokenBoth(text)
    if kind == "surrogate":
        return Surrogate(text)
    if kind == "huge int":
        return ValueError(10**5000)  # str() raises: past the int digit limit
    # A type whose module's name has a lone surrogate (a class name cannot).
    odd: type[Exception] = type("Odd", (Exception,), {"__module__": NOT_UTF8})
    return odd(text)


errors = st.builds(
    _error,
    st.sampled_from(
        ["plain", "broken str", "broken str and repr", "surrogate", "huge int", "odd type"]
    ),
    texts,
)


async def _record(
    path: Path, flow_name: str, task_name: str, param: Any, value: Any, note: str, error: Any
) -> None:
    @flowcore.task(name=task_name)
    async def keeps(v: Any, **extra: Any) -> Any:
        return v  # stored if it can be; a value that cannot is skipped, not an error

    attempts = 0

    @flowcore.task(name=f"{task_name}!", retries=1, retry_on=OSError)
    async def fails() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise OSError(note)  # retried: its message is the history's note
        raise error

    @flowcore.flow(name=flow_name)
    async def body(p: Any) -> None:
        # As an extra keyword (``note`` may be any text: not the parameter's own name ``v``).
        await keeps(value, **{f"x{note}": value})
        await fails()

    @flowcore.flow
    async def after() -> int:
        return 1

    tracing = flowcore.Tracing(parameters=True)
    async with flowcore.Engine(store=path, tracing=tracing) as engine:
        with pytest.raises(type(error)) as info:
            await body(param)
        assert info.value is error  # the flow's own exception, unchanged
        failed_run = engine.last_run
        assert failed_run is not None
        assert await after() == 1  # the engine goes on recording
        later_run = engine.last_run
        assert later_run is not None

    async with flowcore.SQLiteStore(path) as store:
        runs = {r.id: r for r in await store.list_runs()}
        assert set(runs) == {failed_run.id, later_run.id}
        assert runs[later_run.id].state is State.COMPLETED
        run = runs[failed_run.id]
        assert run.state is State.FAILED
        assert run.error_type is not None and run.error_message is not None
        assert run.traceback is not None
        assert isinstance(decode_inputs(run.parameters), dict)
        task_runs = await store.list_task_runs(run.id)
        assert [t.state for t in task_runs] == [State.COMPLETED, State.FAILED]
        assert isinstance(decode_inputs(task_runs[0].inputs), dict)
        failed = task_runs[1]
        assert [h[0] for h in failed.history] == ["Running", "Retrying", "Running", "Failed"]
        assert failed.error_type is not None and failed.error_message is not None
        assert run.trace_id is not None
        spans = await store.list_spans(run.trace_id)
        assert [s.span_id for s in spans] == [run.span_id]
        assert spans[0].status == "ERROR"


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(flow_name=names, task_name=names, param=values, value=values, note=texts, error=errors)
@example(
    flow_name=NOT_UTF8,
    task_name=NOT_UTF8,
    param=NOT_UTF8,
    value=DEEP,
    note=NOT_UTF8,
    error=ValueError("cannot open " + NOT_UTF8),
)
@example(
    flow_name="f",
    task_name="t",
    param=[2**70, -(2**70)],
    value={"nan": float("nan"), "big": 2**70},
    note="\x00",
    error=BrokenBoth(),
)
def test_any_value_is_recorded_and_read_back(
    flow_name: str, task_name: str, param: Any, value: Any, note: str, error: BaseException
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "flowcore.db"
        anyio.run(_record, path, flow_name, task_name, param, value, note, error)


@pytest.mark.anyio
async def test_a_long_lived_engine_keeps_recording_after_an_undecodable_error(
    tmp_path: Path,
) -> None:
    # Regression (issue 12): one error message holding a file name that is not UTF-8
    # made the store's write fail; the writer died, `flowcore runs ls` said "no runs",
    # and every later flow of the engine failed.
    @flowcore.task
    async def opens() -> None:
        raise ValueError("cannot open " + NOT_UTF8)

    @flowcore.flow
    async def reads() -> None:
        await opens()

    @flowcore.flow
    async def fine(i: int) -> int:
        return i

    path = tmp_path / "flowcore.db"
    async with flowcore.Engine(store=path) as engine:
        with pytest.raises(ValueError, match=re.escape("cannot open " + NOT_UTF8)):
            await reads()
        assert await asyncio.gather(*(fine(i) for i in range(3))) == [0, 1, 2]
        assert engine.recorder.last_error is None
    async with flowcore.SQLiteStore(path) as store:
        runs = await store.list_runs()
        assert sorted(r.state.value for r in runs) == ["Completed"] * 3 + ["Failed"]
        (failed,) = [r for r in runs if r.name == "reads"]
        assert failed.error_message == "cannot open caf\\xe9.csv"
        (task_run,) = await store.list_task_runs(failed.id)
        assert task_run.error_type == "ValueError"
        assert task_run.error_message == "cannot open caf\\xe9.csv"
        assert task_run.traceback is not None and "caf\\xe9.csv" in task_run.traceback


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_runs_named_with_lone_surrogates_are_found_by_that_name(
    tmp_path: Path, kind: str
) -> None:
    # Regression: a flow or task named from a file name that is not UTF-8 was recorded
    # (escaped), but looking it up by that name raised UnicodeEncodeError on SQLite.
    @flowcore.task(name=NOT_UTF8, tags=[NOT_UTF8])
    async def reads() -> int:
        return 1

    @flowcore.flow(name=NOT_UTF8)
    async def named() -> int:
        return await reads()

    store: Any = flowcore.MemoryStore() if kind == "memory" else tmp_path / "flowcore.db"
    async with flowcore.Engine(store=store) as engine:
        assert await named() == 1
        store = engine.store
        (run,) = await store.list_runs(name=NOT_UTF8)
        assert [r.id for r in await store.filter_runs(name=NOT_UTF8)] == [run.id]
        assert [r.id for r in await store.filter_runs(tag=NOT_UTF8)] == [run.id]
        (task_run,) = await store.list_task_runs(run.id, tag=NOT_UTF8)
        assert task_run.state is State.COMPLETED
        assert await store.count_task_runs(run.id, tag=NOT_UTF8) == {"Completed": 1}
        assert [e.task_name for e in await store.list_cache(task_name=NOT_UTF8)] == []


@pytest.mark.anyio
async def test_an_exception_whose_str_raises_reaches_the_flow_unchanged() -> None:
    # Regression: recording str(exc) raised inside flowcore, and the flow got that
    # RuntimeError instead of its own exception.
    error = BrokenStr()

    @flowcore.task
    async def breaks() -> None:
        raise error

    @flowcore.flow
    async def catches() -> object:
        try:
            await breaks()
        except BrokenStr as exc:
            return exc
        return "not raised"

    @flowcore.flow
    async def lets_it_through() -> None:
        await breaks()

    async with flowcore.Engine() as engine:
        assert await catches() is error
        with pytest.raises(BrokenStr) as info:
            await lets_it_through()
        assert info.value is error
        assert engine.last_run is not None
        run = await _read_run(engine, engine.last_run.id)
    assert run.state is State.FAILED
    assert run.error_type == "test_recording_property.BrokenStr"
    assert run.error_message == (
        "<unprintable test_recording_property.BrokenStr: str() raised RuntimeError>"
    )


async def _read_run(engine: flowcore.Engine, run_id: str) -> flowcore.FlowRunRecord:
    await engine.recorder.flush()
    return await engine.store.get_run(run_id)
