"""Real flows on PostgreSQL: in process, from two processes at once, and killed with -9
then resumed (modelled on tests/test_multiprocess.py and tests/test_crash_resume.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

import flowcore
from flowcore import State
from flowcore.encoding import decode_inputs
from flowcore.store.crash import mark_crashed_runs
from flowcore.views.trace import load_trace
from flowcore_postgres import PostgresStore

pytestmark = pytest.mark.anyio


@flowcore.task(retries=2, retry_delay=0)
async def flaky(i: int, failures: dict[int, int]) -> int:
    if failures.get(i, 0) > 0:
        failures[i] -= 1
        raise ConnectionError(f"try again {i}")
    return i * 2


@flowcore.task
def square(x: int) -> int:
    return x * x


@flowcore.flow
async def pipeline(n: int, failures: dict[int, int]) -> int:
    doubled = [flaky.submit(i, failures) for i in range(n)]
    squared = [square.submit(d) for d in doubled]  # type: ignore[call-overload]  # a future
    return sum(await flowcore.wait(squared))


async def test_runs_named_with_lone_surrogates_are_found_by_that_name(pg_url: str) -> None:
    # Regression: a run named from a file name that is not UTF-8 was recorded
    # (escaped), but looking it up by that name was refused by PostgreSQL.
    odd = os.fsdecode(b"caf\xe9.csv")

    @flowcore.task(name=odd, tags=[odd])
    async def reads() -> int:
        return 1

    @flowcore.flow(name=odd)
    async def named() -> int:
        return await reads()

    async with flowcore.Engine(store=pg_url):
        assert await named() == 1
    async with PostgresStore(pg_url) as store:
        (run,) = await store.list_runs(name=odd)
        assert [r.id for r in await store.filter_runs(name=odd)] == [run.id]
        assert [r.id for r in await store.filter_runs(tag=odd)] == [run.id]
        (task_run,) = await store.list_task_runs(run.id, tag=odd)
        assert task_run.state is State.COMPLETED and task_run.name == "caf\\xe9.csv"


async def test_a_run_named_with_a_nul_is_found_by_that_name(pg_url: str) -> None:
    # PostgreSQL's text cannot hold a NUL: the run is recorded with it escaped, and a
    # lookup by the name as given failed with CharacterNotInRepertoireError.
    @flowcore.flow(name="etl\x00nightly")
    async def nul() -> int:
        return 1

    async with flowcore.Engine(store=pg_url):
        assert await nul() == 1
    async with PostgresStore(pg_url) as store:
        (run,) = await store.list_runs(name="etl\x00nightly")
        assert run.name == "etl\\x00nightly"
        assert [r.id for r in await store.filter_runs(name="etl\x00nightly")] == [run.id]


async def test_a_flow_runs_end_to_end_and_is_recorded_whole(pg_url: str) -> None:
    # (flowcore.run takes no store: an Engine names it; see the report on FLOWCORE_DB_URL.)
    async with flowcore.Engine(store=pg_url) as engine:
        assert await pipeline(20, {4: 2}) == sum((i * 2) ** 2 for i in range(20))
        assert engine.last_run is not None
        run_id = engine.last_run.id
    async with PostgresStore(pg_url) as store:
        run = await store.get_run(run_id[:8])
        assert run.state is State.COMPLETED and run.name == "pipeline"
        assert await store.count_task_runs(run_id) == {"Completed": 40}
        tasks = await store.list_task_runs(run_id)
        retried = next(t for t in tasks if t.name.endswith("flaky") and t.attempts == 3)
        assert [e[0] for e in retried.history].count("Retrying") == 2
        # Its trace, as `flowcore trace` reads it (with flowcore's own spans, a run's
        # record is its span: read from the records, not from span rows).
        _, spans = await load_trace(store, run_id)
        assert {s.name for s in spans} >= {"flow pipeline"}


async def test_a_nul_character_is_recorded_escaped_not_retried_for_ever(pg_url: str) -> None:
    """A task named from text holding a NUL (a file name read as bytes, say): PostgreSQL's
    text columns cannot hold it, so the batch is refused as a value error, and the
    engine's writer escapes it and writes the batch again (a store error would have
    been retried as it is, for ever)."""

    @flowcore.task(name="header\x00.csv")
    async def opens() -> int:
        return 1

    @flowcore.flow
    async def reads() -> int:
        return await opens()

    async with flowcore.Engine(store=pg_url) as engine:
        assert await reads() == 1
        assert engine.last_run is not None
        run_id = engine.last_run.id
    async with PostgresStore(pg_url) as store:
        run = await store.get_run(run_id)
        assert run.state is State.COMPLETED
        (task,) = await store.list_task_runs(run_id)
        assert task.state is State.COMPLETED and task.name == "header\\x00.csv"


CROWD = textwrap.dedent(
    """
    import asyncio
    import sys

    import flowcore


    @flowcore.task
    async def noop(i):
        return i


    @flowcore.task
    def sync_noop(i):
        return i


    @flowcore.flow
    async def crowd(label):
        futures = [noop.submit(i) for i in range(75)] + [sync_noop.submit(i) for i in range(75)]
        gathered = await asyncio.gather(*(noop(i) for i in range(2000)))
        return len(gathered) + len(await flowcore.wait(futures))


    async def main() -> None:
        async with flowcore.Engine(store=sys.argv[2]):
            print("total", await crowd(sys.argv[1]))


    asyncio.run(main())
    """
)


def run_crowds(script: Path, url: str, labels: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """Run one child per label at once; their exit codes and outputs."""
    children = [
        subprocess.Popen(
            [sys.executable, str(script), label, url],
            cwd=script.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for label in labels
    ]
    outputs = []
    for child in children:
        try:
            out, err = child.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
        outputs.append((child.returncode, out, err))
    return outputs


@pytest.mark.slow
async def test_two_processes_write_one_database(pg_url: str, tmp_path: Path) -> None:
    script = tmp_path / "crowd.py"
    script.write_text(CROWD)
    for returncode, out, err in run_crowds(script, pg_url, ("a", "b")):
        assert returncode == 0, err
        assert out.strip() == "total 2150", (out, err)
    async with PostgresStore(pg_url) as store:
        runs = await store.list_runs()
        assert len(runs) == 2 and {r.state for r in runs} == {State.COMPLETED}
        for run in runs:
            assert await store.count_task_runs(run.id) == {"Completed": 2150}


N, CHUNK = 400, 40
EXPECTED = sum(i * 2 for i in range(N))
THOUSAND = textwrap.dedent(
    f"""
    import asyncio
    import os
    import sys

    import anyio

    import flowcore


    @flowcore.task
    async def work(i: int, log: str) -> int:
        await anyio.sleep(0.01 + (i % 10) * 0.003)  # spread: the kill lands mid-chunk too
        with open(log, "a") as f:
            f.write(f"{{i}}\\n")
            f.flush()
        return i * 2


    @flowcore.flow
    async def chunks(log: str) -> int:
        total = 0
        for start in range(0, {N}, {CHUNK}):
            chunk = range(start, start + {CHUNK})
            total += sum(await asyncio.gather(*(work(i, log) for i in chunk)))
        if os.environ.get("FLOWCORE_TEST_HOLD"):  # the killed child's only
            await anyio.sleep(3600)  # never ends by itself: the kill always finds it running
        return total


    async def main(url: str, durability: str) -> None:
        async with flowcore.Engine(store=url, durability=durability):
            await chunks(sys.argv[1])


    if __name__ == "__main__":
        anyio.run(main, sys.argv[2], sys.argv[3], backend="asyncio")
    """
)


def _log(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def run_child_until_killed(script: Path, log: Path, url: str, durability: str, lines: int) -> int:
    """Start the child, SIGKILL it once the log has ``lines`` lines; returns its pid."""
    with open(script.parent / "child.err", "w") as err:
        child = subprocess.Popen(
            [sys.executable, str(script), str(log), url, durability],
            cwd=script.parent,
            stderr=err,
            env={**os.environ, "FLOWCORE_TEST_HOLD": "1"},
        )
        try:
            deadline = time.monotonic() + 90
            while len(_log(log)) < lines:
                assert child.poll() is None, (script.parent / "child.err").read_text()
                assert time.monotonic() < deadline, f"the log has {len(_log(log))} lines"
                time.sleep(0.002)
            os.kill(child.pid, signal.SIGKILL)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return child.pid


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["batched", "strict"])
async def test_kill_9_then_resume(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: str
) -> None:
    script = tmp_path / "chunks.py"
    script.write_text(THOUSAND)
    log = tmp_path / "side-effects.log"
    pid = run_child_until_killed(script, log, pg_url, durability, lines=170)
    at_kill = _log(log)
    assert len(set(at_kill)) == len(at_kill)

    async with PostgresStore(pg_url) as store:
        [run] = await store.list_runs()
        assert run.state is State.RUNNING and run.pid == pid
        crashed = await mark_crashed_runs(store)  # same machine, pid gone: at once
        assert [r.id for r in crashed] == [run.id]
        before = await store.list_task_runs(run.id)
    completed = {decode_inputs(t.inputs)["i"] for t in before if t.state is State.COMPLETED}
    assert completed <= set(at_kill)
    if durability == "strict":
        assert set(range(max(at_kill) // CHUNK * CHUNK)) <= completed

    monkeypatch.syspath_prepend(str(tmp_path))
    async with flowcore.Engine(store=pg_url) as engine:
        result = await flowcore.resume_async(run.id)
        assert engine.last_run is not None
        await engine.recorder.flush()
        after = await engine.store.list_task_runs(engine.last_run.id)
    assert result == EXPECTED
    assert len(after) == N and all(t.state is State.COMPLETED for t in after)
    runs_of = Counter(_log(log))
    assert set(runs_of) == set(range(N))
    for i in range(N):  # recorded Completed: never again; the rest: once more
        assert runs_of[i] == (i in at_kill) + (i not in completed), i
