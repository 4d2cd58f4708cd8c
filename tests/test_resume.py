"""Resume: re-driving a failed run, replaying the task calls that completed."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from click.testing import CliRunner

import flowcore
import flowcore.ids
from flowcore import ConfigurationError, RunNotFound, State
from flowcore._process import MACHINE
from flowcore.cli import cli
from flowcore.entrypoints import load_flow
from flowcore.errors import ParameterError
from flowcore.records import WriteBatch

CALLS: list[Any] = []
FAIL_AT = 3


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    CALLS.clear()


async def task_runs(engine: flowcore.Engine, run_id: str) -> list[flowcore.TaskRunRecord]:
    await engine.recorder.flush()
    return await engine.store.list_task_runs(run_id)


def exists(marker: str) -> bool:
    return Path(marker).exists()


def last_run_id(engine: flowcore.Engine) -> str:
    assert engine.last_run is not None
    return engine.last_run.id


@flowcore.task
async def step(i: int, marker: str) -> int:
    CALLS.append(("step", i))
    if i == FAIL_AT and not exists(marker):
        raise RuntimeError(f"step {i} fails until {marker} exists")
    return i * 10


@flowcore.flow
async def pipeline(n: int, marker: str) -> int:
    total = 0
    for i in range(n):
        total += await step(i, marker)
    return total


# -- the basic contract ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_resume_replays_completed_calls_and_runs_the_rest(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError, match="step 3 fails"):
            await pipeline(6, str(marker))
        failed = last_run_id(engine)
        assert list(CALLS) == [("step", i) for i in range(4)]
        marker.touch()
        CALLS.clear()

        result: int = await flowcore.resume_async(failed)

        resumed = last_run_id(engine)
        old = await task_runs(engine, failed)
        new = await task_runs(engine, resumed)
        new_run = await engine.store.get_run(resumed)
        old_run = await engine.store.get_run(failed)
        CALLS_AFTER_RESUME = list(CALLS)
        CALLS.clear()
        uncrashed = await pipeline(6, str(marker))
    assert CALLS_AFTER_RESUME == [("step", 3), ("step", 4), ("step", 5)]
    assert result == uncrashed == sum(i * 10 for i in range(6))
    assert old_run.state is State.FAILED
    assert new_run.state is State.COMPLETED
    assert new_run.resumed_from == failed and resumed != failed
    assert new_run.parameters == old_run.parameters
    assert "resuming run" in new_run.history[0][2] and failed in new_run.history[0][2]
    assert [t.state for t in old] == [State.COMPLETED] * 3 + [State.FAILED]
    assert [t.state for t in new] == [State.COMPLETED] * 6
    for t in new[:3]:
        assert t.attempts == 1
        assert "replayed" in t.history[-1][2] and failed[:8] in t.history[-1][2]
        assert t.result is not None
    assert old[3].attempts == 1 and new[3].attempts == 2  # continues the attempt count
    assert [h[0] for h in new[3].history] == ["Running", "Completed"]


@flowcore.task(retries=1)
async def stubborn(marker: str) -> str:
    CALLS.append("stubborn")
    if not exists(marker):
        raise RuntimeError("not yet")
    return "done"


@flowcore.flow
async def stubborn_flow(marker: str) -> str:
    return await stubborn(marker)


@pytest.mark.anyio
async def test_resume_continues_the_attempt_count_of_a_retried_task(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError):
            await stubborn_flow(str(marker))
        first = last_run_id(engine)
        with pytest.raises(RuntimeError):
            await flowcore.resume_async(first)  # still failing: its retries are used up
        second = last_run_id(engine)
        marker.touch()
        assert await flowcore.resume_async(second) == "done"
        third = last_run_id(engine)
        attempts = [(await task_runs(engine, r))[0].attempts for r in (first, second, third)]
        runs = [await engine.store.get_run(r) for r in (first, second, third)]
    assert attempts == [2, 3, 4]
    assert CALLS == ["stubborn"] * 4  # 2 attempts, then one per resume
    assert [r.resumed_from for r in runs] == [None, first, second]
    assert [r.state for r in runs] == [State.FAILED, State.FAILED, State.COMPLETED]


@pytest.mark.anyio
async def test_resume_of_a_resumed_run_replays_what_either_completed(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError):
            await pipeline(6, str(marker))
        first = last_run_id(engine)
        with pytest.raises(RuntimeError):
            await flowcore.resume_async(first)
        second = last_run_id(engine)
        marker.touch()
        CALLS.clear()
        assert await flowcore.resume_async(second) == sum(i * 10 for i in range(6))
        third = last_run_id(engine)
        tasks = await task_runs(engine, third)
    assert CALLS == [("step", 3), ("step", 4), ("step", 5)]
    assert [t.attempts for t in tasks] == [1, 1, 1, 3, 1, 1]


def test_sync_resume(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    with pytest.raises(RuntimeError):
        flowcore.run(pipeline, 5, str(marker))

    async def failed_run() -> str:
        async with flowcore.SQLiteStore(os.environ["FLOWCORE_HOME"] + "/flowcore.db") as store:
            [run] = await store.list_runs()
        assert run.state is State.FAILED
        return run.id

    run_id = anyio.run(failed_run)
    marker.touch()
    CALLS.clear()
    assert flowcore.resume(run_id[:8]) == sum(i * 10 for i in range(5))  # an id prefix works
    assert CALLS == [("step", 3), ("step", 4)]


# -- what cannot be resumed ------------------------------------------------------------------


@pytest.mark.anyio
async def test_resume_of_a_completed_run_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    marker.touch()
    async with flowcore.Engine() as engine:
        await pipeline(2, str(marker))
        with pytest.raises(ConfigurationError, match="completed; there is nothing to resume"):
            await flowcore.resume_async(last_run_id(engine))


@pytest.mark.anyio
async def test_resume_of_an_unknown_run_raises_run_not_found() -> None:
    async with flowcore.Engine():
        with pytest.raises(RunNotFound):
            await flowcore.resume_async("0123456789abcdef")


@flowcore.flow
async def other_flow(n: int, marker: str) -> int:
    return n


@pytest.mark.anyio
async def test_resume_with_a_flow_of_another_name_is_refused(tmp_path: Path) -> None:
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError):
            await pipeline(5, str(tmp_path / "marker"))
        failed = last_run_id(engine)
        with pytest.raises(ConfigurationError, match="is a run of flow 'pipeline', not of"):
            await flowcore.resume_async(failed, flow=other_flow)
        # The explicit flow of the right name works.
        (tmp_path / "marker").touch()
        assert await flowcore.resume_async(failed, flow=pipeline) == 100


@pytest.mark.anyio
async def test_resume_of_a_flow_defined_in_a_function_needs_the_flow(tmp_path: Path) -> None:
    @flowcore.flow(name="pipeline")
    async def local(n: int, marker: str) -> int:
        return await pipeline.fn(n, marker)

    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError):
            await local(5, str(tmp_path / "marker"))
        failed = last_run_id(engine)
        run = await engine.store.get_run(failed)
        assert run.entrypoint is None
        with pytest.raises(ConfigurationError, match="did not record where its flow is defined"):
            await flowcore.resume_async(failed)
        (tmp_path / "marker").touch()
        assert await flowcore.resume_async(failed, flow=local) == 100


@pytest.mark.anyio
async def test_resume_of_a_standalone_task_run_is_refused(tmp_path: Path) -> None:
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError):
            await step(FAIL_AT, str(tmp_path / "marker"))
        run = await engine.store.get_run(last_run_id(engine))
        assert run.kind == "task"
        with pytest.raises(ConfigurationError, match="single task"):
            await flowcore.resume_async(run.id)


@flowcore.flow
async def takes_items(items: Any, marker: str) -> int:
    await step(FAIL_AT, marker)
    return len(items)


class Opaque:
    pass


@pytest.mark.parametrize(
    ("items", "kind"),
    [
        (list(range(1001)), "list"),
        ({str(i): i for i in range(1001)}, "dict"),
        ("s" * 3000, "str"),
        (b"b" * 3000, "bytes"),
        (Opaque(), "Opaque"),
        ([1, Opaque()], "list"),  # a value inside a list that could not be recorded
        ({"client": Opaque()}, "dict"),
    ],
    ids=["huge list", "huge dict", "long str", "long bytes", "object", "nested", "nested dict"],
)
@pytest.mark.anyio
async def test_a_parameter_not_recorded_in_full_cannot_be_resumed(
    tmp_path: Path, items: Any, kind: str
) -> None:
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError):
            await takes_items(items, str(tmp_path / "marker"))
        failed = last_run_id(engine)
        (tmp_path / "marker").touch()
        CALLS.clear()
        with pytest.raises(ConfigurationError, match="not recorded in full") as info:
            await flowcore.resume_async(failed)
    assert "'items'" in str(info.value)
    assert CALLS == []  # refused before running anything


@dataclasses.dataclass
class Window:
    start: datetime.datetime
    days: int


@flowcore.task
async def in_window(window: Window, when: datetime.datetime, marker: str) -> str:
    CALLS.append(type(window).__name__)
    assert isinstance(window, Window) and isinstance(when, datetime.datetime)
    if not exists(marker):
        raise RuntimeError("later")
    return f"{window.days}@{when.isoformat()}"


@flowcore.flow
async def typed_params(window: Window, when: datetime.datetime, ids: list[int], marker: str) -> str:
    first = await step(ids[0], marker)  # ids[0] != FAIL_AT: completes
    return f"{first}:{await in_window(window, when, marker)}"


@pytest.mark.anyio
async def test_recorded_parameters_are_converted_to_the_annotated_types(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    window = Window(datetime.datetime(2024, 3, 1, tzinfo=datetime.UTC), 7)
    when = datetime.datetime(2024, 3, 4, 5, 6, tzinfo=datetime.UTC)
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError):
            await typed_params(window, when, [1, 2], str(marker))
        marker.touch()
        CALLS.clear()
        result: str = await flowcore.resume_async(last_run_id(engine))
    assert result == f"10:7@{when.isoformat()}"
    assert CALLS == ["Window"]  # step(1) replayed: the recorded inputs matched


@flowcore.flow
async def spread(marker: str, *parts: int, **options: str) -> str:
    await gate(marker)
    return f"{parts} {sorted(options.items())}"


@pytest.mark.anyio
async def test_args_and_kwargs_are_passed_again_as_they_were(tmp_path: Path) -> None:
    # Regression: the recorded *parts and **options were passed by their names, so the
    # resumed run got parts=() and options={"parts": [...], "options": {...}}.
    marker = tmp_path / "marker"
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError, match="closed"):
            await spread(str(marker), 1, 2, colour="red")
        marker.touch()
        result = await flowcore.resume_async(last_run_id(engine))
    assert result == "(1, 2) [('colour', 'red')]"


@flowcore.flow(name="counted")
async def counted(n: str, marker: str) -> str:
    await gate(marker)
    return n


@flowcore.flow(name="counted")
async def counted_now_int(n: int, marker: str) -> int:
    """``counted`` after a change of annotation: its recorded ``n`` no longer fits."""
    return n


@pytest.mark.anyio
async def test_recorded_parameters_that_no_longer_fit_are_a_clear_error(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError, match="closed"):
            await counted("seven", str(marker))
        failed = last_run_id(engine)
        with pytest.raises(ParameterError) as refused:
            await flowcore.resume_async(failed, flow=counted_now_int)
        assert await engine.store.list_runs() == [await engine.store.get_run(failed)]
    message = str(refused.value)
    assert message.startswith(
        f"cannot resume run {failed[:8]} of 'counted': its recorded parameters no longer fit "
        "the flow as it is now"
    )
    assert refused.value.problems == {"n": "Expected `int`, got `str` - at `$.n` (given 'seven')"}


@pytest.mark.anyio
async def test_a_run_refused_for_its_parameters_cannot_be_resumed(tmp_path: Path) -> None:
    untyped: Any = counted_now_int
    async with flowcore.Engine() as engine:
        with pytest.raises(ParameterError):
            await untyped("seven", str(tmp_path / "marker"), extra=1)
        failed = last_run_id(engine)
        with pytest.raises(ParameterError) as refused:
            await flowcore.resume_async(failed)
    assert set(refused.value.problems) == {"n", "extra"}


# -- matching calls ------------------------------------------------------------------------


@flowcore.task
async def tick(x: int) -> int:
    CALLS.append(("tick", x))
    return len(CALLS)


@flowcore.task
async def gate(marker: str) -> None:
    CALLS.append("gate")
    if not exists(marker):
        raise RuntimeError("closed")


@flowcore.flow
async def ticking(marker: str) -> list[int]:
    first = await tick(7)
    second = await tick(7)
    await gate(marker)
    third = await tick(7)
    return [first, second, third]


@pytest.mark.anyio
async def test_repeated_equal_calls_are_matched_by_position(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError, match="closed"):
            await ticking(str(marker))
        assert CALLS == [("tick", 7), ("tick", 7), "gate"]
        marker.touch()
        CALLS.clear()
        result: list[int] = await flowcore.resume_async(last_run_id(engine))
        tasks = await task_runs(engine, last_run_id(engine))
    # The first two calls replay their own values (1 and 2); the third never ran before.
    assert result == [1, 2, 2]
    assert CALLS == ["gate", ("tick", 7)]
    assert [(t.name, t.state) for t in tasks] == [
        ("tick", State.COMPLETED),
        ("tick", State.COMPLETED),
        ("gate", State.COMPLETED),
        ("tick", State.COMPLETED),
    ]
    assert ["replayed" in str(t.history[-1]) for t in tasks] == [True, True, False, False]


@flowcore.task
async def add(a: int, b: int) -> int:
    CALLS.append(("add", a, b))
    return a + b


@flowcore.flow
async def fan_out(n: int, marker: str) -> int:
    parts = step.map(range(n), flowcore.unmapped(marker))
    # a future stands for its result (cast: the signature can't say so)
    sums = [add.submit(cast(int, part), 1) for part in parts]
    return sum(await flowcore.wait(sums))


@pytest.mark.anyio
async def test_resume_of_concurrent_calls_with_future_inputs(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    async with flowcore.Engine() as engine:
        with pytest.raises((RuntimeError, flowcore.UpstreamFailed)):
            await fan_out(8, str(marker))
        failed = last_run_id(engine)
        old = await task_runs(engine, failed)
        marker.touch()
        CALLS.clear()
        result: int = await flowcore.resume_async(failed)
        new = await task_runs(engine, last_run_id(engine))
    assert result == sum(i * 10 + 1 for i in range(8))
    assert [t.state for t in old if t.name == "add"].count(State.UPSTREAM_FAILED) == 1
    assert sorted(CALLS, key=str) == [("add", 30, 1), ("step", 3)]
    assert all(t.state is State.COMPLETED for t in new)


# -- stored results and replay ---------------------------------------------------------------


@flowcore.task
async def large(n: int) -> str:
    CALLS.append(("large", n))
    return "L" * n


@flowcore.flow
async def large_then_fail(marker: str) -> int:
    value = await large(50_000)
    await step(FAIL_AT, marker)
    return len(value)


@pytest.mark.anyio
async def test_a_large_result_is_replayed_from_its_file(
    tmp_path: Path, flowcore_home: Path
) -> None:
    marker = tmp_path / "marker"
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError):
            await large_then_fail(str(marker))
        [big, _] = await task_runs(engine, last_run_id(engine))
        assert big.result_ref is not None
        assert (flowcore_home / "results" / big.result_ref[:2] / big.result_ref).is_file()
        marker.touch()
        CALLS.clear()
        assert await flowcore.resume_async(last_run_id(engine)) == 50_000
    assert CALLS == [("step", FAIL_AT)]


@pytest.mark.anyio
async def test_a_missing_result_file_means_the_call_runs_again(
    tmp_path: Path, flowcore_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "marker"
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError):
            await large_then_fail(str(marker))
        [big, _] = await task_runs(engine, last_run_id(engine))
        assert big.result_ref is not None
        (flowcore_home / "results" / big.result_ref[:2] / big.result_ref).unlink()
        marker.touch()
        CALLS.clear()
        with caplog.at_level(logging.WARNING, logger="flowcore"):
            assert await flowcore.resume_async(last_run_id(engine)) == 50_000
    assert CALLS == [("large", 50_000), ("step", FAIL_AT)]
    assert any("cannot replay" in r.getMessage() for r in caplog.records)


class Unstorable:
    def __init__(self) -> None:
        self.fn = lambda: None


@flowcore.task
async def unstorable() -> Unstorable:
    CALLS.append("unstorable")
    return Unstorable()


@flowcore.flow
async def unstorable_then_fail(marker: str) -> bool:
    value = await unstorable()
    await step(FAIL_AT, marker)
    return isinstance(value, Unstorable)


@pytest.mark.anyio
async def test_a_result_that_was_not_stored_runs_again(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError):
            await unstorable_then_fail(str(marker))
        marker.touch()
        CALLS.clear()
        assert await flowcore.resume_async(last_run_id(engine)) is True
    assert CALLS == ["unstorable", ("step", FAIL_AT)]


# -- entrypoints -----------------------------------------------------------------------------

FLOW_MODULE = textwrap.dedent(
    """
    import pathlib

    import flowcore


    @flowcore.task
    async def work(i: int, log: str, marker: str) -> int:
        with open(log, "a") as f:
            f.write(f"{i}\\n")
        if i == 2 and not pathlib.Path(marker).exists():
            raise RuntimeError("not yet")
        return i + 100


    @flowcore.flow
    async def chain(n: int, log: str, marker: str) -> int:
        total = 0
        for i in range(n):
            total += await work(i, log, marker)
        return total


    if __name__ == "__main__":
        import sys

        print(flowcore.run(chain, int(sys.argv[1]), sys.argv[2], sys.argv[3]))
    """
)


def _python(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _only_run() -> flowcore.FlowRunRecord:
    async with flowcore.SQLiteStore(Path(os.environ["FLOWCORE_HOME"]) / "flowcore.db") as store:
        [run] = await store.list_runs()
    return run


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_flow_in_a_module_is_resumed_from_its_entrypoint(tmp_path: Path) -> None:
    name = "flowcore_test_resume_module"
    project = tmp_path / "project"
    project.mkdir()
    (project / f"{name}.py").write_text(FLOW_MODULE)
    log, marker = tmp_path / "log", tmp_path / "marker"
    done = _python(
        "-c",
        f"import flowcore, {name} as m; flowcore.run(m.chain, 5, {str(log)!r}, {str(marker)!r})",
        cwd=project,
    )
    assert done.returncode != 0 and "not yet" in done.stderr
    run = await _only_run()
    assert run.entrypoint == f"{name}:chain"
    marker.touch()
    # `flowcore resume` runs from a console script: the module is importable only
    # because resume looks in the current folder, as the docs promise.
    elsewhere = tmp_path / "bin"
    elsewhere.mkdir()
    (elsewhere / "resume.py").write_text(
        "import sys, flowcore\nprint(flowcore.resume(sys.argv[1]))\n"
    )
    done = _python(str(elsewhere / "resume.py"), run.id, cwd=project)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sum(i + 100 for i in range(5)))
    assert log.read_text().split() == ["0", "1", "2", "2", "3", "4"]
    async with flowcore.SQLiteStore(Path(os.environ["FLOWCORE_HOME"]) / "flowcore.db") as store:
        [resumed, _] = await store.list_runs()
    assert resumed.resumed_from == run.id and resumed.state is State.COMPLETED


@pytest.mark.anyio
async def test_a_flow_in_an_imported_module_is_resumed_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "flowcore_test_resume_inprocess"
    (tmp_path / f"{name}.py").write_text(FLOW_MODULE)
    log, marker = tmp_path / "log", tmp_path / "marker"
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        module = importlib.import_module(name)
        async with flowcore.Engine() as engine:
            with pytest.raises(RuntimeError, match="not yet"):
                await module.chain(4, str(log), str(marker))
            failed = last_run_id(engine)
            assert engine.last_run is not None
            assert engine.last_run.entrypoint == f"{name}:chain"
            sys.modules.pop(name)  # resume imports it again
            marker.touch()
            assert await flowcore.resume_async(failed) == sum(i + 100 for i in range(4))
    finally:
        sys.modules.pop(name, None)
    assert log.read_text().split() == ["0", "1", "2", "2", "3"]


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_flow_in_a_main_script_is_resumed_from_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "scripts" / "job.py"
    script.parent.mkdir()
    script.write_text(FLOW_MODULE)
    log, marker = tmp_path / "log", tmp_path / "marker"
    done = _python(str(script), "5", str(log), str(marker), cwd=tmp_path)
    assert done.returncode != 0 and "not yet" in done.stderr
    run = await _only_run()
    assert run.entrypoint == f"{script.resolve()}:chain"
    marker.touch()
    monkeypatch.syspath_prepend(str(tmp_path))  # restores sys.path after the file is loaded
    monkeypatch.chdir(tmp_path.parent)  # resume does not depend on the current folder
    async with flowcore.Engine() as engine:
        assert await flowcore.resume_async(run.id) == sum(i + 100 for i in range(5))
        resumed = await engine.store.get_run(last_run_id(engine))
    assert log.read_text().split() == ["0", "1", "2", "2", "3", "4"]  # the guard did not run
    assert resumed.resumed_from == run.id
    assert resumed.entrypoint is not None and resumed.entrypoint.endswith("job.py:chain")


@pytest.mark.anyio
async def test_an_entrypoint_that_no_longer_exists_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "flowcore_test_resume_vanishing"
    (tmp_path / f"{name}.py").write_text(FLOW_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        module = importlib.import_module(name)
        async with flowcore.Engine() as engine:
            with pytest.raises(RuntimeError):
                await module.chain(4, str(tmp_path / "log"), str(tmp_path / "marker"))
            failed = last_run_id(engine)
            sys.modules.pop(name)
            (tmp_path / f"{name}.py").unlink()
            with pytest.raises(ConfigurationError, match="flow=my_flow"):
                await flowcore.resume_async(failed)
    finally:
        sys.modules.pop(name, None)


# -- one resumption at a time ----------------------------------------------------------------


class Hold:
    """Holds resumed runs at a task until two are there or one was refused (an event,
    not a sleep: the test goes on as soon as it knows which)."""

    def __init__(self) -> None:
        self.arrived = 0
        self.release = anyio.Event()

    def arrive(self) -> None:
        self.arrived += 1
        if self.arrived == 2:
            self.release.set()


HOLD: Hold | None = None


@flowcore.task
async def held(marker: str) -> str:
    CALLS.append("held")
    if HOLD is not None:
        HOLD.arrive()
        await HOLD.release.wait()
    return "held"


@flowcore.flow
async def held_flow(marker: str) -> int:
    total = await step(0, marker) + await step(1, marker) + await step(FAIL_AT, marker)
    await held(marker)
    return total + await step(4, marker)


@pytest.mark.anyio
async def test_two_resumes_at_once_one_runs_and_the_other_is_refused_naming_it(
    tmp_path: Path,
) -> None:
    global HOLD
    marker = tmp_path / "marker"
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError, match="step 3 fails"):
            await held_flow(str(marker))
        failed = last_run_id(engine)
    marker.touch()
    CALLS.clear()
    HOLD = hold = Hold()
    outcomes: dict[str, Any] = {}

    async def resume_in_an_engine_of_its_own(name: str) -> None:
        try:
            async with flowcore.Engine():
                outcomes[name] = await flowcore.resume_async(failed)
        except ConfigurationError as exc:
            outcomes[name] = exc
            hold.release.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(resume_in_an_engine_of_its_own, "a")
            tg.start_soon(resume_in_an_engine_of_its_own, "b")
    finally:
        HOLD = None
    refused = [o for o in outcomes.values() if isinstance(o, ConfigurationError)]
    results = [o for o in outcomes.values() if not isinstance(o, ConfigurationError)]
    assert len(refused) == 1 and results == [0 + 10 + 30 + 40]
    async with flowcore.Engine() as engine:
        resumptions = [r for r in await engine.store.list_runs() if r.resumed_from == failed]
    assert [r.state for r in resumptions] == [State.COMPLETED]  # the claimed row, written on
    [winner] = resumptions
    message = str(refused[0])
    assert f"run {failed[:8]} of 'held_flow' is being resumed already, by run {winner.id}" in (
        message
    )
    assert f"(process {os.getpid()} on {flowcore.ids.HOST}, Running)" in message
    assert CALLS == [("step", FAIL_AT), "held", ("step", 4)]  # nothing ran twice


@pytest.mark.anyio
async def test_a_run_resumed_to_completion_is_not_resumed_again_unless_forced(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "marker"
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError):
            await pipeline(6, str(marker))
        failed = last_run_id(engine)
        marker.touch()
        await flowcore.resume_async(failed)
        done = last_run_id(engine)
        CALLS.clear()
        with pytest.raises(ConfigurationError) as refused:
            await flowcore.resume_async(failed)
        assert CALLS == []  # refused before running anything
        runs_before = len(await engine.store.list_runs())
        assert await flowcore.resume_async(failed, force=True) == sum(i * 10 for i in range(6))
        forced = await engine.store.get_run(last_run_id(engine))
        runs_after = len(await engine.store.list_runs())
    message = str(refused.value)
    assert f"run {failed[:8]} of 'pipeline' was resumed already, to completion: by run {done}" in (
        message
    )
    assert f"flowcore.resume('{failed[:8]}', force=True)" in message
    assert f"flowcore resume --force {failed[:8]}" in message
    assert runs_after == runs_before + 1  # the refusal wrote no run
    assert forced.resumed_from == failed and forced.state is State.COMPLETED
    assert CALLS == [("step", 3), ("step", 4), ("step", 5)]  # replayed from the failed run


def claimant_of(run_id: str, pid: int) -> flowcore.FlowRunRecord:
    """A resumption of ``run_id`` recorded Running by process ``pid`` of this machine."""
    now = time.time()
    return flowcore.FlowRunRecord(
        id="c1a1" + uuid.uuid4().hex[4:], name="pipeline", state=State.RUNNING, created=now,
        started=now, heartbeat=now, history=[("Running", now, f"resuming run {run_id}")],
        host=flowcore.ids.HOST, pid=pid, machine=MACHINE, resumed_from=run_id,
    )  # fmt: skip


@pytest.mark.anyio
async def test_a_resumption_running_in_another_process_holds_the_run(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError):
            await pipeline(5, str(marker))
        failed = last_run_id(engine)
        marker.touch()
        # Another process of this machine is resuming it: our parent, alive.
        claimant = claimant_of(failed, os.getppid())
        await engine.store.write(WriteBatch([claimant], []))
        CALLS.clear()
        with pytest.raises(ConfigurationError) as refused:
            await flowcore.resume_async(failed)
        resumptions = [r.id for r in await engine.store.list_runs() if r.resumed_from == failed]
    assert CALLS == []  # refused before running anything
    assert resumptions == [claimant.id]  # and wrote no run
    message = str(refused.value)
    assert f"is being resumed already, by run {claimant.id}" in message
    assert f"(process {os.getppid()} on {flowcore.ids.HOST}, Running)" in message
    assert "resumed by one process at a time" in message


@pytest.mark.anyio
async def test_a_claimant_whose_process_died_holds_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError):
            await pipeline(5, str(marker))
        failed = last_run_id(engine)
        marker.touch()
        gone = claimant_of(failed, dead_pid())
        await engine.store.write(WriteBatch([gone], []))
        CALLS.clear()
        assert await flowcore.resume_async(failed) == sum(i * 10 for i in range(5))
        marked = await engine.store.get_run(gone.id)
    assert marked.state is State.CRASHED
    assert CALLS == [("step", 3), ("step", 4)]


@pytest.mark.anyio
async def test_a_claimed_resumption_that_cannot_start_gives_its_claim_back(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "marker"
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError):
            await pipeline(5, str(marker))
        failed = last_run_id(engine)
        marker.touch()
        nowhere = pipeline.with_options(executor="no-such-executor")
        with pytest.raises(ConfigurationError, match="no-such-executor"):
            await flowcore.resume_async(failed, flow=nowhere)
        [unstarted] = [r for r in await engine.store.list_runs() if r.resumed_from == failed]
        assert await flowcore.resume_async(failed) == sum(i * 10 for i in range(5))
    assert unstarted.state is State.FAILED
    assert unstarted.error_message is not None and "no-such-executor" in unstarted.error_message


def dead_pid() -> int:
    with subprocess.Popen([sys.executable, "-c", "pass"]) as child:
        child.wait()
    return child.pid


# -- calls whose inputs were not recorded in full ---------------------------------------------


class Named:
    """An object recorded as a stand-in whose repr is the same for every instance."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return "Named"


def label(value: Any) -> str:
    if isinstance(value, flowcore.Secret):
        return str(value.get())
    if isinstance(value, Named):
        return value.name
    if isinstance(value, list | str):
        return str(value[-1])
    return str(value)


@flowcore.task
async def echo(value: Any) -> str:
    CALLS.append("echo")
    return label(value)


@flowcore.task(record_inputs=False)
async def echo_unrecorded(value: Any) -> str:
    CALLS.append("echo")
    return label(value)


#: Two different values of each kind that are recorded alike.
ALIKE: dict[str, Any] = {
    "long str": lambda: ("x" * 3000 + "a", "x" * 3000 + "b"),  # truncated: same head, length
    "long list": lambda: ([*range(1000), "a"], [*range(1000), "b"]),  # summarised alike
    "unrecorded": lambda: ("a", "b"),  # record_inputs=False: nothing recorded
    "secret": lambda: (flowcore.Secret("a"), flowcore.Secret("b")),  # the same stand-in
    "object": lambda: (Named("a"), Named("b")),  # a stand-in with the same repr
}


@flowcore.flow
async def swapped(kind: str, marker: str) -> list[str]:
    first, second = ALIKE[kind]()
    # The calls are made in the other order once the marker exists (when resumed).
    order = [second, first] if exists(marker) else [first, second]
    call = echo_unrecorded if kind == "unrecorded" else echo
    results = [await call(value) for value in order]
    await gate(marker)
    return results


@pytest.mark.parametrize("kind", sorted(ALIKE))
@pytest.mark.anyio
async def test_calls_recorded_alike_get_their_own_results_when_the_order_changes(
    tmp_path: Path, kind: str
) -> None:
    marker = tmp_path / "marker"
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError, match="closed"):
            await swapped(kind, str(marker))
        failed = last_run_id(engine)
        first, second, _ = await task_runs(engine, failed)
        marker.touch()
        CALLS.clear()
        result: list[str] = await flowcore.resume_async(failed)
    assert first.inputs == second.inputs  # what made them ambiguous
    assert result == ["b", "a"]  # each call its own result, not the other's
    if kind == "object":
        # No stable encoding, so no identity: never replayed, both run again.
        assert first.identity == second.identity == "unhashable"
        assert CALLS == ["echo", "echo", "gate"]
    else:
        assert first.identity != second.identity and len(first.identity or "") == 64
        assert CALLS == ["gate"]  # both replayed, each from its own match


@pytest.mark.anyio
async def test_calls_recorded_in_full_carry_no_identity(tmp_path: Path) -> None:
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError):
            await pipeline(5, str(tmp_path / "marker"))
        tasks = await task_runs(engine, last_run_id(engine))
    assert [t.identity for t in tasks] == [None] * 4  # their inputs are their identity


# -- resuming the code that ran ---------------------------------------------------------------


def script_with_flow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "jobs" / "job.py"
    script.parent.mkdir()
    script.write_text(FLOW_MODULE)
    monkeypatch.syspath_prepend(str(script.parent))  # undoes the loader's sys.path insert
    return script


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def change(script: Path, imported: Path) -> None:
    """Change the script: loading it now leaves ``imported`` behind."""
    with script.open("a") as f:
        f.write(f"\npathlib.Path({str(imported)!r}).touch()\n")


@pytest.mark.anyio
async def test_a_run_whose_flow_file_changed_is_not_resumed_unless_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = script_with_flow(tmp_path, monkeypatch)
    log, marker, imported = tmp_path / "log", tmp_path / "marker", tmp_path / "imported"
    chain = load_flow(f"{script}:chain")
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError, match="not yet"):
            await chain(4, str(log), str(marker))
        failed = last_run_id(engine)
        run = await engine.store.get_run(failed)
        marker.touch()
        change(script, imported)
        with pytest.raises(ConfigurationError) as refused:
            await flowcore.resume_async(failed)
        assert not imported.exists()  # the changed file was not run
        assert log.read_text().split() == ["0", "1", "2"]
        result = await flowcore.resume_async(failed, allow_changed_code=True)
        resumed = await engine.store.get_run(last_run_id(engine))
    assert run.entrypoint_hash == hashlib.sha256(FLOW_MODULE.encode()).hexdigest()
    message = str(refused.value)
    assert f"cannot resume run {failed[:8]} of 'chain': the flow's source file " in message
    assert str(script.resolve()) in message and "has changed since the run" in message
    assert f"flowcore.resume('{failed[:8]}', allow_changed_code=True)" in message
    assert f"flowcore resume --allow-changed-code {failed[:8]}" in message
    assert result == sum(i + 100 for i in range(4)) and imported.exists()
    assert resumed.entrypoint_hash == sha256_of(script)


@pytest.mark.anyio
async def test_a_flow_given_to_resume_is_checked_against_the_code_that_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = script_with_flow(tmp_path, monkeypatch)
    log, marker = tmp_path / "log", tmp_path / "marker"
    before = load_flow(f"{script}:chain")
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError, match="not yet"):
            await before(4, str(log), str(marker))
        failed = last_run_id(engine)
        marker.touch()
        change(script, tmp_path / "imported")
        after = load_flow(f"{script}:chain")  # the changed code
        with pytest.raises(ConfigurationError, match="has changed since the run"):
            await flowcore.resume_async(failed, flow=after)
        # The flow object loaded before the change is the code that ran: it resumes.
        assert await flowcore.resume_async(failed, flow=before) == sum(i + 100 for i in range(4))


@pytest.mark.anyio
async def test_the_flow_file_is_hashed_once_per_flow_not_per_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[object] = []
    flow_module = sys.modules["flowcore.flow"]  # (flowcore.flow is the decorator)
    monkeypatch.setattr(flow_module, "file_sha256", lambda *a, **k: reads.append(a))
    (tmp_path / "marker").touch()
    async with flowcore.Engine() as engine:
        for _ in range(3):
            await pipeline(2, str(tmp_path / "marker"))
            run = await engine.store.get_run(last_run_id(engine))
            assert run.entrypoint_hash == pipeline.entrypoint_hash
    assert pipeline.entrypoint_hash == sha256_of(Path(__file__))
    assert reads == []


def test_resume_from_the_command_line_with_force_and_changed_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = script_with_flow(tmp_path, monkeypatch)
    log, marker = tmp_path / "log", tmp_path / "marker"
    args = [f"{script}:chain", "-p", "n=3", "-p", f"log={log}", "-p", f"marker={marker}"]
    failed = CliRunner().invoke(cli, ["run", *args])
    assert failed.exit_code == 1
    match = re.search(r"flowcore runs show ([0-9a-f]{8})", failed.stderr)
    assert match, failed.output
    run_id = match.group(1)
    marker.touch()
    change(script, tmp_path / "imported")

    refused = CliRunner().invoke(cli, ["resume", run_id])
    assert refused.exit_code == 1 and "has changed since the run" in refused.stderr
    assert f"--allow-changed-code {run_id}" in refused.stderr
    allowed = CliRunner().invoke(cli, ["resume", "--allow-changed-code", run_id])
    assert allowed.exit_code == 0, allowed.output
    assert allowed.stdout.strip() == str(sum(i + 100 for i in range(3)))
    again = CliRunner().invoke(cli, ["resume", "--allow-changed-code", run_id])
    assert again.exit_code == 1 and "was resumed already, to completion" in again.stderr
    assert f"flowcore resume --force {run_id}" in again.stderr
    forced = CliRunner().invoke(cli, ["resume", "--allow-changed-code", "--force", run_id])
    assert forced.exit_code == 0, forced.output
    assert log.read_text().split() == ["0", "1", "2", "2", "2"]  # only the unfinished call


@flowcore.flow
async def logs_in(password: flowcore.Secret[str], marker: str) -> str:
    await gate(marker)
    return "in"


@pytest.mark.anyio
async def test_a_secret_parameter_is_refused_with_what_to_do(tmp_path: Path) -> None:
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError, match="closed"):
            await logs_in(flowcore.Secret("hunter2"), str(tmp_path / "marker"))
        failed = last_run_id(engine)
        with pytest.raises(ConfigurationError) as refused:
            await flowcore.resume_async(failed)
    assert str(refused.value) == (
        f"cannot resume run {failed[:8]}: its parameter 'password' was a flowcore.Secret, "
        "which is never recorded; call the flow again, passing the secret"
    )


@pytest.mark.anyio
async def test_a_resumed_run_fires_its_flows_hooks(tmp_path: Path) -> None:
    """Regression: resume started the run without the flow's hooks, so a resumed run that
    completed (or failed again) told nobody."""
    seen: list[tuple[str, str]] = []

    def note(event: flowcore.hooks.HookEvent) -> None:
        seen.append((event.kind, event.run_id))

    hooked = pipeline.with_options(on_completion=note, on_failure=note)
    marker = tmp_path / "marker"
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError):
            await hooked(5, str(marker))
        failed = last_run_id(engine)
        assert seen == [("failure", failed)]
        marker.touch()
        assert await flowcore.resume_async(failed, flow=hooked) == 100
        resumed = last_run_id(engine)
    assert resumed != failed
    assert seen == [("failure", failed), ("completion", resumed)]
