"""Run logs: ``logging`` and ``print`` inside runs kept with their task run, bounded per
run, read back and followed by ``flowcore runs logs``; logging outside runs untouched."""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

import flowcore
from flowcore.cli import cli
from flowcore.engine.core import get_run_logger
from flowcore.engine.logs import RUN_LOGGER
from flowcore.options import Logs
from flowcore.records import LogRecord, WriteBatch
from flowcore.views.logs import follow_logs, log_line_text, parse_level

pytestmark = pytest.mark.anyio

LOGGER = "tests.logs"
log = logging.getLogger(LOGGER)


@pytest.fixture(autouse=True)
def info_logger() -> Iterator[None]:
    """The test logger lets INFO through (as an application that configured logging at
    INFO would), and is put back as it was."""
    level = log.level
    log.setLevel(logging.INFO)
    yield
    log.setLevel(level)


async def lines_of(store: flowcore.Store, run_id: str, **filters: Any) -> list[LogRecord]:
    found: list[LogRecord] = await store.list_logs(run_id, **filters)
    return found


def brief(lines: list[LogRecord]) -> list[tuple[int | None, str | None, str, str]]:
    """(seq, task, level name, message) of each line."""
    return [(x.seq, x.task, logging.getLevelName(x.level), x.message) for x in lines]


# -- capture ------------------------------------------------------------------------------------


async def test_logging_in_the_flow_body_and_async_and_sync_tasks_is_kept_per_task_run() -> None:
    @flowcore.task
    async def fetch(page: int) -> int:
        log.info("fetching page %d", page)
        return page

    @flowcore.task
    def parse(rows: int) -> int:  # a worker thread: the context is copied into it
        log.warning("parsing %d rows in %s", rows, "a thread")
        return rows

    @flowcore.task
    async def outer() -> int:
        log.info("outer before")
        value = await fetch(9)  # a task called in a task: its own task run
        log.info("outer after")
        return value

    @flowcore.flow
    async def ingest() -> int:
        log.info("starting")
        pages = await fetch.map(range(2))
        total = await parse(sum(pages))
        await outer()
        log.info("done: %d", total)
        return total

    async with flowcore.Engine("memory") as engine:
        assert await ingest() == 1
        assert engine.last_run is not None
        run_id = engine.last_run.id
        lines = await lines_of(engine.store, run_id)
        assert engine.statistics().logs_written == len(lines) == 8
    by_task = sorted(brief(lines), key=lambda x: (x[0] if x[0] is not None else -1, x[3]))
    assert by_task == [
        (None, None, "INFO", "done: 1"),
        (None, None, "INFO", "starting"),
        (0, "fetch", "INFO", "fetching page 0"),
        (1, "fetch", "INFO", "fetching page 1"),
        (2, "parse", "WARNING", "parsing 1 rows in a thread"),
        (3, "outer", "INFO", "outer after"),
        (3, "outer", "INFO", "outer before"),
        (4, "fetch", "INFO", "fetching page 9"),
    ]
    assert (lines[0].message, lines[-1].message) == ("starting", "done: 1")
    assert {x.logger for x in lines} == {LOGGER}
    assert all(x.run_id == run_id for x in lines)
    assert [x.id for x in lines] == sorted(x.id for x in lines if x.id is not None)


async def test_a_subflow_keeps_its_own_lines_and_a_standalone_task_run_its_own() -> None:
    @flowcore.task
    async def step() -> None:
        log.info("in the child's task")

    @flowcore.flow
    async def child() -> None:
        log.info("child body")
        await step()

    @flowcore.flow
    async def parent() -> None:
        log.info("parent body")
        await child()

    async with flowcore.Engine("memory") as engine:
        await parent()
        assert engine.last_run is not None
        parent_id = engine.last_run.id
        (sub,) = await engine.store.child_runs(parent_id)
        assert brief(await lines_of(engine.store, parent_id)) == [
            (None, None, "INFO", "parent body")
        ]
        assert brief(await lines_of(engine.store, sub.id)) == [
            (None, None, "INFO", "child body"),
            (0, "step", "INFO", "in the child's task"),
        ]
        await step()  # outside any flow: a run of its own
        (alone,) = await engine.store.list_runs(name="step")
        assert brief(await lines_of(engine.store, alone.id)) == [
            (0, "step", "INFO", "in the child's task")
        ]


async def test_levels_follow_the_logging_configuration_and_the_engines_level() -> None:
    quiet = logging.getLogger("tests_quiet")
    quiet.setLevel(logging.WARNING)  # as the root logger of an unconfigured application

    @flowcore.flow
    async def noisy() -> None:
        log.debug("a debug line (the logger is at INFO: no record is made)")
        log.info("info")
        quiet.info("an info line of a WARNING logger: no record is made")
        quiet.error("error")
        log.log(25, "a level without a name")

    async with flowcore.Engine("memory") as engine:
        await noisy()
        assert engine.last_run is not None
        got = brief(await lines_of(engine.store, engine.last_run.id))
    assert got == [
        (None, None, "INFO", "info"),
        (None, None, "ERROR", "error"),
        (None, None, "Level 25", "a level without a name"),
    ]

    async with flowcore.Engine("memory", logs=Logs(level="WARNING")) as engine:
        await noisy()
        assert engine.last_run is not None
        got = brief(await lines_of(engine.store, engine.last_run.id))
        assert got == [(None, None, "ERROR", "error")]
        assert brief(await lines_of(engine.store, engine.last_run.id, min_level=40)) == got

    async with flowcore.Engine("memory", logs=False) as engine:
        await noisy()
        assert engine.last_run is not None
        assert await lines_of(engine.store, engine.last_run.id) == []
        assert engine.statistics().logs_written == 0


async def test_an_exception_is_kept_with_its_traceback() -> None:
    @flowcore.task
    def divide(x: int) -> float:
        try:
            return 1 / x
        except ZeroDivisionError:
            log.exception("cannot divide by %d", x)
        try:
            raise KeyError("missing")
        except KeyError as exc:
            log.warning("as a value", exc_info=exc)
        log.error("with a stack", stack_info=True)
        return 0.0

    @flowcore.flow
    async def work() -> float:
        return await divide(0)

    async with flowcore.Engine("memory") as engine:
        await work()
        assert engine.last_run is not None
        first, second, third = await lines_of(engine.store, engine.last_run.id)
    assert first.message.startswith("cannot divide by 0\nTraceback (most recent call last):\n")
    assert "return 1 / x" in first.message
    assert first.message.endswith("ZeroDivisionError: division by zero")
    assert second.message.startswith("as a value\nTraceback")
    assert second.message.endswith("KeyError: 'missing'")
    assert third.message.startswith("with a stack\nStack (most recent call last):")


async def test_a_message_that_cannot_be_formatted_is_described_and_logging_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pytest's handlers raise what logging's would report ("--- Logging error ---").
    monkeypatch.setattr(logging, "raiseExceptions", False)

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no str")

    @flowcore.flow
    async def bad() -> None:
        log.info("%d items", "not a number")
        log.info("value: %s", Broken())
        log.info("after")

    async with flowcore.Engine("memory") as engine:
        await bad()
        assert engine.last_run is not None
        messages = [x.message for x in await lines_of(engine.store, engine.last_run.id)]
    assert messages[0].startswith("<unprintable log message '%d items' % ('not a number',)")
    assert "TypeError" in messages[0]
    assert messages[1].startswith("<unprintable log message 'value: %s'")
    assert messages[2] == "after"


# -- print --------------------------------------------------------------------------------------


async def test_log_prints_sends_print_to_the_run_log_and_nothing_else(
    capsys: pytest.CaptureFixture[str],
) -> None:
    @flowcore.task(log_prints=True)
    async def loud(x: int) -> int:
        print("loud", x)
        print("a line", end="")
        print(" in pieces")
        print("unfinished", end="")  # kept when the task ends
        return x

    @flowcore.task(log_prints=True)
    def loud_in_a_thread() -> None:
        print("from", "a", "thread", sep="-")

    @flowcore.task
    async def plain() -> None:
        print("plain task: not kept")

    @flowcore.flow
    async def work() -> None:
        print("flow body: not kept")
        await loud(1)
        await loud_in_a_thread()
        await plain()

    stdout = sys.stdout
    async with flowcore.Engine("memory") as engine:
        await work()
        assert engine.last_run is not None
        got = brief(await lines_of(engine.store, engine.last_run.id))
    assert got == [
        (0, "loud", "INFO", "loud 1"),
        (0, "loud", "INFO", "a line in pieces"),
        (0, "loud", "INFO", "unfinished"),
        (1, "loud_in_a_thread", "INFO", "from-a-thread"),
    ]
    assert sys.stdout is stdout  # put back once no log_prints call runs
    shown = capsys.readouterr().out
    assert shown == "flow body: not kept\nplain task: not kept\n"


async def test_a_flows_log_prints_holds_for_its_tasks_unless_they_say_otherwise(
    capsys: pytest.CaptureFixture[str],
) -> None:
    @flowcore.task
    async def inherits() -> None:
        print("inherited")

    @flowcore.task(log_prints=False)
    async def opts_out() -> None:
        print("shown on stdout")

    @flowcore.flow(log_prints=True)
    async def work() -> None:
        print("flow body")
        await inherits()
        await opts_out()

    async with flowcore.Engine("memory") as engine:
        await work()
        assert engine.last_run is not None
        got = brief(await lines_of(engine.store, engine.last_run.id))
        assert {x.logger for x in await lines_of(engine.store, engine.last_run.id)} == {"print"}
    assert got == [(None, None, "INFO", "flow body"), (0, "inherits", "INFO", "inherited")]
    assert capsys.readouterr().out == "shown on stdout\n"
    # Copies keep the option, and a task copy can drop it.
    copy = work.with_options(name="copy")
    assert copy.log_prints is True and copy.fn is work.fn  # fn stays the plain function
    assert inherits.with_options(log_prints=True).log_prints is True
    quiet = opts_out.with_options(log_prints=None)
    assert quiet.log_prints is None
    assert quiet.fn is opts_out.fn and quiet.call is quiet.fn  # no wrapper any more


async def test_print_outside_log_prints_calls_is_untouched_while_one_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    started, go_on = anyio.Event(), anyio.Event()

    @flowcore.task(log_prints=True)
    async def slow() -> None:
        print("kept")
        started.set()
        await go_on.wait()

    @flowcore.flow
    async def work() -> None:
        await slow()

    async with flowcore.Engine("memory"), anyio.create_task_group() as tg:
        tg.start_soon(work)
        await started.wait()
        print("other code, while a log_prints task runs")
        go_on.set()
    assert capsys.readouterr().out == "other code, while a log_prints task runs\n"


async def test_log_prints_is_checked_at_decoration() -> None:
    with pytest.raises(flowcore.ConfigurationError, match="`log_prints` must be True, False"):
        flowcore.task(log_prints="yes")  # type: ignore[call-overload]
    with pytest.raises(flowcore.ConfigurationError, match="`log_prints` must be True or False"):

        @flowcore.flow(log_prints=1)  # type: ignore[call-overload, untyped-decorator]
        async def f() -> None: ...


# -- get_run_logger -----------------------------------------------------------------------------


async def test_get_run_logger_records_whatever_the_logging_levels_and_stays_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=RUN_LOGGER)
    bound: list[logging.LoggerAdapter[logging.Logger]] = []

    @flowcore.task
    async def step() -> None:
        logger = get_run_logger()
        bound.append(logger)
        logger.debug("debug from the task")
        logger.info("info from the task")
        logger.warning("warning from the task")

    @flowcore.flow
    async def work() -> None:
        get_run_logger().info("from the body")
        await step()
        bound[0].info("the task's logger, used in the body")

    async with flowcore.Engine("memory", logs=Logs(level=logging.DEBUG)) as engine:
        await work()
        assert engine.last_run is not None
        run_id = engine.last_run.id
        lines = await lines_of(engine.store, run_id)
    assert brief(lines) == [
        (None, None, "INFO", "from the body"),
        (0, "step", "DEBUG", "debug from the task"),
        (0, "step", "INFO", "info from the task"),
        (0, "step", "WARNING", "warning from the task"),
        (0, "step", "INFO", "the task's logger, used in the body"),
    ]
    assert {x.logger for x in lines} == {RUN_LOGGER}
    # The logging configuration shows what its level lets through, from the caller's line.
    shown = [r for r in caplog.records if r.name == RUN_LOGGER]
    assert [r.getMessage() for r in shown] == ["warning from the task"]
    assert shown[0].filename == "test_logs.py" and shown[0].funcName == "step"
    assert shown[0].flowcore_run_id == run_id and shown[0].flowcore_task_seq == 0  # type: ignore[attr-defined]


async def test_get_run_logger_outside_a_run_says_where_to_call_it() -> None:
    with pytest.raises(flowcore.ConfigurationError, match="outside a flow run; call it in a"):
        get_run_logger()


# -- bounds -------------------------------------------------------------------------------------


async def test_a_run_keeps_at_most_max_lines_then_one_line_says_how_many_were_dropped() -> None:
    @flowcore.task
    def chatty(n: int) -> None:
        for i in range(n):
            log.info("line %d", i)

    @flowcore.flow
    async def work() -> None:
        await chatty(4)
        await chatty(8)

    async with flowcore.Engine("memory", logs=Logs(max_lines=5)) as engine:
        await work()
        assert engine.last_run is not None
        lines = await lines_of(engine.store, engine.last_run.id)
    assert [x.message for x in lines[:5]] == ["line 0", "line 1", "line 2", "line 3", "line 0"]
    assert len(lines) == 6
    last = lines[-1]
    assert (last.seq, last.task, last.logger) == (None, None, "flowcore")
    assert last.level == logging.WARNING
    assert "limit of 5 lines or 1,000,000 bytes: 7 later lines (42 bytes) were dropped" in (
        last.message
    )
    assert "Logs(max_lines=..., max_bytes=...)" in last.message


async def test_a_run_keeps_at_most_max_bytes_and_cuts_the_line_that_crosses_it() -> None:
    @flowcore.flow
    async def work() -> None:
        log.info("0123456789")  # 10 bytes
        log.info("é" * 10)  # 20 bytes of UTF-8: 30
        log.info("x" * 50)  # crosses 40: its first 10 bytes are kept
        log.info("dropped")
        log.info("dropped too")

    async with flowcore.Engine("memory", logs=Logs(max_bytes=40)) as engine:
        await work()
        assert engine.last_run is not None
        lines = await lines_of(engine.store, engine.last_run.id)
    assert [x.message for x in lines[:3]] == [
        "0123456789",
        "é" * 10,
        "x" * 10 + " [cut: 40 more bytes]",
    ]
    assert "2 later lines (18 bytes) were dropped" in lines[3].message
    assert len(lines) == 4


async def test_a_huge_first_line_is_cut_rather_than_lost() -> None:
    @flowcore.flow
    async def work() -> None:
        log.info("é" * 1000)

    async with flowcore.Engine("memory", logs=Logs(max_bytes=5)) as engine:
        await work()
        assert engine.last_run is not None
        first, last = await lines_of(engine.store, engine.last_run.id)
    # Cut on a character boundary: 2 whole characters (4 bytes) of the 5 allowed.
    assert first.message == "éé [cut: 1,996 more bytes]"
    assert "its last line was cut" in last.message


async def test_the_limit_holds_for_lines_from_many_threads_at_once() -> None:
    @flowcore.task
    def chatty(k: int) -> None:
        for i in range(200):
            log.info("thread %d line %d", k, i)

    @flowcore.flow
    async def work() -> None:
        await chatty.map(range(8))

    async with flowcore.Engine("memory", logs=Logs(max_lines=1000), sync_threads=8) as engine:
        await work()
        assert engine.last_run is not None
        lines = await lines_of(engine.store, engine.last_run.id)
    assert len(lines) == 1001
    assert "600 later lines" in lines[-1].message
    assert len({x.message for x in lines[:-1]}) == 1000


async def test_each_flow_run_has_its_own_limit() -> None:
    @flowcore.flow
    async def child() -> None:
        for i in range(3):
            log.info("child %d", i)

    @flowcore.flow
    async def parent() -> None:
        for i in range(3):
            log.info("parent %d", i)
        await child()

    async with flowcore.Engine("memory", logs=Logs(max_lines=3)) as engine:
        await parent()
        assert engine.last_run is not None
        (sub,) = await engine.store.child_runs(engine.last_run.id)
        assert len(await lines_of(engine.store, engine.last_run.id)) == 3
        assert len(await lines_of(engine.store, sub.id)) == 3


def test_log_options_are_checked() -> None:
    with pytest.raises(flowcore.ConfigurationError) as caught:
        Logs(max_lines=0, max_bytes=-1, level="LOUD")
    message = str(caught.value)
    assert "`max_lines` must be an int >= 1" in message
    assert "`max_bytes` must be an int >= 1" in message
    assert "`level` must be a logging level" in message and "'LOUD'" in message
    assert Logs(level="warning").levelno == logging.WARNING
    with pytest.raises(flowcore.ConfigurationError, match="`logs` must be True, False or a"):
        flowcore.Engine("memory", logs="yes")  # type: ignore[arg-type]


async def test_lines_a_sync_task_logs_after_its_run_ended_are_counted_and_said_at_close() -> None:
    go_on, started, finished = threading.Event(), threading.Event(), threading.Event()

    @flowcore.task
    def lingering() -> None:
        started.set()
        go_on.wait(timeout=60)  # outlives its flow, which times out (a thread runs on)
        for i in range(5):
            log.info("late %d", i)
        finished.set()

    # Time for its thread to start, even on a busy machine: a sync task whose deadline
    # passes before its thread picked it up is never called (the test would wait for a
    # call that never comes).
    @flowcore.flow(timeout=1)
    async def work() -> None:
        await lingering()

    async with flowcore.Engine("memory", logs=Logs(max_lines=2)) as engine:
        with pytest.raises(flowcore.FlowTimeout):
            await work()
        assert started.is_set()  # the run ended while the task was running
        go_on.set()
        assert await anyio.to_thread.run_sync(finished.wait, 30)
        assert engine.last_run is not None
        run_id = engine.last_run.id
    lines = await lines_of(engine.store, run_id)
    assert [x.message for x in lines[:2]] == ["late 0", "late 1"]
    assert "3 later lines (18 bytes) were dropped" in lines[2].message
    assert len(lines) == 3


class FailingOnce(flowcore.MemoryStore):
    """Refuses the first write that holds log lines (a full disk), then recovers."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0

    async def write(self, batch: WriteBatch) -> None:
        if batch.logs and not self.refused:
            self.refused = len(batch.logs)
            raise flowcore.StoreError("disk full (simulated)")
        await super().write(batch)


async def test_lines_of_a_failed_write_are_written_once_later_in_order() -> None:
    @flowcore.flow
    async def work() -> None:
        log.info("one")
        log.info("two")
        engine = flowcore.current_run().engine
        with pytest.raises(flowcore.StoreError):
            await engine.recorder.flush()  # refused: the lines go back to the queue
        log.info("three")

    store = FailingOnce()
    async with flowcore.Engine(store) as engine:
        await work()
        assert engine.last_run is not None
        lines = await lines_of(store, engine.last_run.id)
    assert store.refused == 2
    assert [x.message for x in lines] == ["one", "two", "three"]


# -- logging outside runs -----------------------------------------------------------------------


async def test_logging_outside_runs_is_untouched_and_the_factory_is_put_back() -> None:
    before = logging.getLogRecordFactory()
    async with flowcore.Engine("memory") as engine:
        assert logging.getLogRecordFactory() is not before
        log.info("outside any run")
        record = logging.makeLogRecord({"msg": "made by hand", "levelno": logging.INFO})
        assert record.getMessage() == "made by hand"
        assert type(log.makeRecord(LOGGER, logging.INFO, "f", 1, "m", (), None)) is (
            logging.LogRecord
        )
        assert not engine.recorder.logs
    assert logging.getLogRecordFactory() is before


async def test_a_factory_another_library_installs_meanwhile_is_kept() -> None:
    before = logging.getLogRecordFactory()
    tagged: list[str] = []

    @flowcore.flow
    async def work() -> None:
        log.info("once")

    async with flowcore.Engine("memory"):
        ours = logging.getLogRecordFactory()

        def theirs(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = ours(*args, **kwargs)
            tagged.append(record.getMessage())
            return record

        logging.setLogRecordFactory(theirs)
    try:
        assert logging.getLogRecordFactory() is theirs  # not undone by the engine
        async with flowcore.Engine("memory") as engine:
            await work()
            assert engine.last_run is not None
            lines = await lines_of(engine.store, engine.last_run.id)
        assert [x.message for x in lines] == ["once"]  # captured once, not twice
        assert tagged == ["once"]
    finally:
        logging.setLogRecordFactory(before)


@pytest.mark.slow
def test_an_application_without_logging_configuration_still_sees_warnings(tmp_path: Path) -> None:
    # Outside pytest (whose handlers take every record), as an application runs: a root
    # handler would silence logging.lastResort and make basicConfig() do nothing.
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, logging, sys
            import flowcore

            @flowcore.flow
            async def work():
                logging.getLogger("app").warning("inside a run")

            async def main():
                async with flowcore.Engine("memory"):
                    logging.getLogger("app").warning("outside runs, no configuration")
                    await work()
                    logging.basicConfig(format="configured: %(message)s", stream=sys.stdout)
                    logging.getLogger("app").warning("after basicConfig")

            asyncio.run(main())
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stderr == "outside runs, no configuration\ninside a run\n"
    assert done.stdout == "configured: after basicConfig\n"


async def test_two_engines_at_once_keep_their_own_runs_lines() -> None:
    first, second = flowcore.Engine("memory"), flowcore.Engine("memory")
    a_done, b_done, go = anyio.Event(), anyio.Event(), anyio.Event()
    before = logging.getLogRecordFactory()

    async def run_in(engine: flowcore.Engine, name: str, done: anyio.Event) -> None:
        @flowcore.flow
        async def work() -> None:
            log.info("%s before", name)
            done.set()
            await go.wait()  # both runs are going, each in its engine
            log.info("%s after", name)

        async with engine:
            await work()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_in, first, "a", a_done)
        tg.start_soon(run_in, second, "b", b_done)
        await a_done.wait()
        await b_done.wait()
        go.set()
    assert logging.getLogRecordFactory() is before
    for engine, name in ((first, "a"), (second, "b")):
        assert engine.last_run is not None
        got = [x.message for x in await lines_of(engine.store, engine.last_run.id)]
        assert got == [f"{name} before", f"{name} after"]


def test_engines_on_two_threads_at_once_keep_their_own_runs_lines() -> None:
    results: dict[str, list[str]] = {}
    barrier = threading.Barrier(2)

    @flowcore.task
    def step(name: str) -> None:
        for i in range(100):
            log.info("%s %d", name, i)

    def run(name: str) -> None:
        async def main() -> None:
            async with flowcore.Engine("memory") as engine:
                barrier.wait()  # both engines open at once

                @flowcore.flow
                async def work() -> None:
                    await step(name)

                await work()
                barrier.wait()
                assert engine.last_run is not None
                lines = await engine.store.list_logs(engine.last_run.id)
                results[name] = [x.message for x in lines]

        anyio.run(main)

    before = logging.getLogRecordFactory()
    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {name: [f"{name} {i}" for i in range(100)] for name in "ab"}
    assert logging.getLogRecordFactory() is before


# -- reading: the store, the view, the command line ---------------------------------------------


async def test_lines_are_persisted_by_the_batched_writer_in_sqlite(tmp_path: Path) -> None:
    @flowcore.task
    async def step(i: int) -> None:
        # (The run logger's INFO lines reach no handler at its default level: pytest's
        # report, shipped between processes, could not hold the lone surrogate.)
        get_run_logger().info("step %d: \ud800 lone surrogate", i)

    @flowcore.flow
    async def work() -> None:
        await step.map(range(3))

    async with flowcore.Engine(tmp_path / "runs.db") as engine:
        await work()
        assert engine.last_run is not None
        run_id = engine.last_run.id
    async with flowcore.SQLiteStore(tmp_path / "runs.db") as store:
        lines = await store.list_logs(run_id)
        fetch_1 = await store.list_logs(run_id, seq=1)
    assert sorted(x.message for x in lines) == [
        f"step {i}: \\ud800 lone surrogate" for i in range(3)
    ]
    assert [x.seq for x in fetch_1] == [1]


async def test_following_a_log_sees_lines_as_they_come_and_stops_when_the_run_ends() -> None:
    first_written, first_seen = anyio.Event(), anyio.Event()
    run_ids: list[str] = []

    @flowcore.flow
    async def work() -> None:
        log.info("one")
        engine = flowcore.current_run().engine
        await engine.recorder.commit()  # the run and its first line are in the store
        run_ids.append(flowcore.current_run().id)
        first_written.set()
        await first_seen.wait()
        log.warning("two")
        log.info("three")

    pages: list[list[str]] = []

    async def follow() -> None:
        await first_written.wait()
        async with flowcore.SQLiteStore(flowcore.store.flowcore_home() / "flowcore.db") as store:
            async for page in follow_logs(store, run_ids[0][:8], poll=0.01):
                pages.append([x.message for x in page])
                first_seen.set()

    async with flowcore.Engine() as engine, anyio.create_task_group() as tg:
        tg.start_soon(follow)
        await work()
    assert engine.last_run is not None and engine.last_run.state is flowcore.State.COMPLETED
    assert pages[0] == ["one"]
    assert [m for page in pages[1:] for m in page] == ["two", "three"]


def write_run(home: Path, messages: list[tuple[str, int, str | None]]) -> str:
    """A completed run in ``home``'s database whose body and task log ``messages``
    ((text, level, task name or None))."""

    @flowcore.task
    async def fetch(text: str, level: int) -> None:
        log.log(level, "%s", text)

    @flowcore.task
    async def parse(text: str, level: int) -> None:
        log.log(level, "%s", text)

    tasks = {"fetch": fetch, "parse": parse}

    @flowcore.flow
    async def work() -> None:
        for text, level, task in messages:
            if task is None:
                log.log(level, "%s", text)
            else:
                await tasks[task](text, level)

    async def main() -> str:
        async with flowcore.Engine(home / "flowcore.db") as engine:
            await work()
            assert engine.last_run is not None
            return engine.last_run.id

    return anyio.run(main)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_runs_logs_prints_the_log_filtered_by_task_and_level(flowcore_home: Path) -> None:
    run_id = write_run(
        flowcore_home,
        [
            ("body start", logging.INFO, None),
            ("fetching", logging.INFO, "fetch"),
            ("slow page", logging.WARNING, "fetch"),
            ("bad row", logging.ERROR, "parse"),
        ],
    )
    out = invoke("runs", "logs", run_id[:8])
    assert out.exit_code == 0, out.output
    rows = out.output.splitlines()
    assert len(rows) == 4
    assert rows[0].endswith(" INFO     flow tests.logs: body start")
    assert rows[1].endswith(" INFO     fetch#0 tests.logs: fetching")
    assert rows[2].endswith(" WARNING  fetch#1 tests.logs: slow page")
    assert rows[3].endswith(" ERROR    parse#2 tests.logs: bad row")
    out = invoke("runs", "logs", run_id, "--task", "fetch", "--level", "warning")
    assert [r.split(": ", 1)[1] for r in out.output.splitlines()] == ["slow page"]
    out = invoke("runs", "logs", run_id, "--level", "40")
    assert [r.split(": ", 1)[1] for r in out.output.splitlines()] == ["bad row"]
    out = invoke("runs", "logs", run_id, "--limit", "2")
    assert [r.split(": ", 1)[1] for r in out.output.splitlines()] == ["body start", "fetching"]
    # --follow on a finished run prints what there is and ends.
    out = invoke("runs", "logs", run_id, "--follow", "--task", "parse")
    assert out.exit_code == 0 and out.output.splitlines() == rows[3:]


def test_runs_logs_json(flowcore_home: Path) -> None:
    run_id = write_run(flowcore_home, [("a", logging.INFO, None), ("b", logging.ERROR, "fetch")])
    out = invoke("runs", "logs", run_id, "--json")
    data = json.loads(out.output)
    assert [(d["seq"], d["task"], d["level"], d["levelno"], d["message"]) for d in data] == [
        (None, None, "INFO", 20, "a"),
        (0, "fetch", "ERROR", 40, "b"),
    ]
    assert data[0]["run_id"] == run_id and data[0]["logger"] == LOGGER
    assert data[0]["time"].endswith("Z") and data[0]["id"] < data[1]["id"]
    out = invoke("runs", "logs", run_id, "--json", "--follow")  # JSON Lines
    assert [json.loads(row) for row in out.output.splitlines()] == data


def test_runs_logs_shows_hostile_text_as_text(flowcore_home: Path) -> None:
    hostile = (
        "\x1b]52;c;ZXZpbA==\x07clipboard \x1b[2J\rover\u202eesrever\n"
        "2026-01-01 00:00:00.000 ERROR    flow app: a forged line"
    )
    run_id = write_run(flowcore_home, [(hostile, logging.WARNING, None)])
    out = invoke("runs", "logs", run_id)
    assert "\x1b" not in out.output and "\r" not in out.output and "\u202e" not in out.output
    assert "\\x1b]52;c;ZXZpbA==\\x07clipboard \\x1b[2J\\rover\\u202eesrever" in out.output
    rows = out.output.splitlines()
    assert len(rows) == 2
    assert rows[1] == "    2026-01-01 00:00:00.000 ERROR    flow app: a forged line"  # indented
    data = json.loads(invoke("runs", "logs", run_id, "--json").output)
    assert data[0]["message"] == hostile  # exact in JSON
    raw = invoke("runs", "logs", run_id, "--json", "--follow").output
    assert "\u202e" not in raw and "\\u202e" in raw and len(raw.splitlines()) == 1


def test_runs_logs_errors(flowcore_home: Path) -> None:
    out = CliRunner().invoke(cli, ["runs", "logs", "abc"])
    assert out.exit_code == 1 and "no runs yet" in out.stderr
    run_id = write_run(flowcore_home, [("a", logging.INFO, None)])
    out = CliRunner().invoke(cli, ["runs", "logs", run_id, "--level", "LOUD"])
    assert out.exit_code == 2
    assert "error: --level: 'LOUD' is not a log level; give one of DEBUG" in out.stderr
    out = CliRunner().invoke(cli, ["runs", "logs", "ffffffff"])
    assert out.exit_code == 1 and "no run with id 'ffffffff'" in out.stderr
    out = CliRunner().invoke(cli, ["runs", "logs", run_id, "--task", "\x1b[2Jnone"])
    assert out.exit_code == 0 and out.stdout == ""
    assert f"run {run_id[:8]} has no log lines with --task \\x1b[2Jnone" in out.stderr


def test_levels_by_name_and_number() -> None:
    assert [parse_level(x) for x in ("debug", "Warn", "FATAL", "25")] == [10, 30, 50, 25]
    with pytest.raises(ValueError, match="not a log level"):
        parse_level("-1")
    line = LogRecord("r" * 32, None, None, 0.0, 25, "x", "m")
    assert " Level 25 flow x: m" in log_line_text(line)


@pytest.mark.slow
async def test_runs_logs_follow_prints_lines_as_they_come_and_ends_with_the_run(
    flowcore_home: Path,
) -> None:
    go_on = anyio.Event()
    started = anyio.Event()
    run_ids: list[str] = []

    @flowcore.flow
    async def work() -> None:
        log.info("first")
        await flowcore.current_run().engine.recorder.commit()
        run_ids.append(flowcore.current_run().id)
        started.set()
        await go_on.wait()
        log.info("second")

    async with flowcore.Engine() as engine, anyio.create_task_group() as tg:
        tg.start_soon(work)
        await started.wait()
        process = await anyio.to_thread.run_sync(
            functools.partial(
                subprocess.Popen,
                [sys.executable, "-m", "flowcore", "runs", "logs", run_ids[0], "--follow"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "FLOWCORE_HOME": str(flowcore_home)},
            )
        )
        try:
            assert process.stdout is not None
            first = await anyio.to_thread.run_sync(process.stdout.readline)
            assert first.endswith(" INFO     flow tests.logs: first\n")
            go_on.set()  # the run logs its second line and ends
            second = await anyio.to_thread.run_sync(process.stdout.readline)
            assert second.endswith(" INFO     flow tests.logs: second\n")
            code = await anyio.to_thread.run_sync(lambda: process.wait(timeout=60))
        finally:
            if process.poll() is None:
                process.kill()
            process.communicate()
    assert code == 0
    assert engine.last_run is not None and engine.last_run.state is flowcore.State.COMPLETED
