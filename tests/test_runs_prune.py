"""Retention: ``flowcore runs prune``, ``flowcore logs prune``, the retention of
``flowcore serve``, and the SQLite store's prune itself (its chunks, an interrupted
prune, the indexes it walks).

Old runs are made by engines on a clock 40 days back (everything they record is dated
then); result files are made to look as old as their runs, since blob pruning leaves
young files alone. The store contract's retention cases (``flowcore.testing``) hold
every store to the same semantics; these are the commands and the SQLite details.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import anyio
import msgspec
import pytest
from click.testing import CliRunner, Result

import flowcore
from flowcore import SQLiteStore, State
from flowcore._process import MACHINE
from flowcore.assets import AssetGraph, materialize_async
from flowcore.cli import cli
from flowcore.cli.logs import logs_group
from flowcore.errors import ConfigurationError, RunNotFound, StoreError
from flowcore.records import FlowRunRecord, LogRecord, TaskRunRecord, WriteBatch
from flowcore.serve import Server
from flowcore.store import MemoryStore
from flowcore.store.base import PruneCount, RunRetention
from flowcore.store.sqlite import MIGRATIONS, retention

T = TypeVar("T")
DAY = 86400.0
NOW = time.time()
BIG = 20_000  # characters: a result over 16 KiB is a file of its own


@flowcore.task
async def step(i: int) -> int:
    logging.getLogger("app").warning("step %d", i)
    return i


@flowcore.task
async def big(tag: str) -> str:
    return tag * BIG


@flowcore.flow
async def child(n: int) -> int:
    return sum(await step.map(range(n)))


@flowcore.flow
async def pipeline(tag: str, n: int = 3) -> int:
    flowcore.get_run_logger().info("pipeline %s", tag)
    await big(tag)
    return await child(n) + sum(await step.map(range(n)))


@flowcore.task(cache=flowcore.CachePolicy())
async def cached_big(tag: str) -> str:
    return tag * BIG


@flowcore.flow
async def caching(tag: str) -> str:
    return await cached_big(tag)


@flowcore.asset
def table() -> str:
    return "t" * BIG


@flowcore.asset
def size(table: str) -> int:
    return len(table)


# -- helpers ---------------------------------------------------------------------------------


def home() -> Path:
    return Path(os.environ["FLOWCORE_HOME"])


def db_path() -> Path:
    return home() / "flowcore.db"


def on_store(fn: Callable[[SQLiteStore], Awaitable[T]]) -> T:
    async def main() -> T:
        async with SQLiteStore(db_path()) as store:
            return await fn(store)

    return anyio.run(main)


def run_at(days_ago: float, flow: Any, *args: Any) -> str:
    """Run ``flow(*args)``, then date the run (and its subflows) ``days_ago`` days back;
    the run's id."""

    async def main() -> str:
        async with flowcore.Engine() as engine:
            await flow(*args)
            assert engine.last_run is not None
            return engine.last_run.id

    run_id = anyio.run(main)
    if days_ago:
        age_runs(run_id, days_ago)
    return run_id


def age_runs(run_id: str, days: float) -> None:
    """Move the times of a run and its subflows ``days`` days back, in the database (a
    store never rewrites an ended run, and a run records the real time)."""

    async def tree(store: SQLiteStore) -> list[FlowRunRecord]:
        found, todo = [], [run_id]
        while todo:
            found.append(await store.get_run(todo.pop()))
            todo += [r.id for r in await store.child_runs(found[-1].id)]
        return found

    shift = days * DAY
    with closing(sqlite3.connect(db_path())) as db:
        for run in on_store(tree):
            run.created -= shift
            for field in ("started", "ended", "heartbeat"):
                if (value := getattr(run, field)) is not None:
                    setattr(run, field, value - shift)
            db.execute(
                "UPDATE flow_runs SET created = ?, body = ? WHERE id = ?",
                (run.created, msgspec.msgpack.encode(run), run.id),
            )
        db.commit()


def age_result_files(days: float = 40) -> None:
    """Date every result file back: blob pruning deletes only files older than a grace."""
    stamp = time.time() - days * DAY
    for path in (home() / "results").rglob("*"):
        if path.is_file():
            os.utime(path, (stamp, stamp))


def result_files() -> set[str]:
    return {p.name for p in (home() / "results").rglob("*") if p.is_file()}


def invoke(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, input=input)


def invoke_logs(*args: str, input: str | None = None) -> Result:
    """``flowcore logs ...`` (the group, as ``flowcore`` registers it)."""
    return CliRunner().invoke(logs_group, list(args), catch_exceptions=False, input=input)


def tree_counts(run_id: str) -> tuple[int, int, int]:
    """Runs, task runs and log lines of a run's tree, as stored."""

    async def count(store: SQLiteStore) -> tuple[int, int, int]:
        runs, tasks, lines = 0, 0, 0
        todo = [run_id]
        while todo:
            current = todo.pop()
            runs += 1
            tasks += len(await store.list_task_runs(current))
            lines += len(await store.list_logs(current))
            todo += [r.id for r in await store.child_runs(current)]
        return runs, tasks, lines

    return on_store(count)


def exists(run_id: str) -> bool:
    async def get(store: SQLiteStore) -> bool:
        try:
            await store.get_run(run_id)
        except RunNotFound:
            return False
        return True

    return on_store(get)


@pytest.fixture
def old_and_new() -> tuple[list[str], str]:
    """Two runs of ``pipeline`` 40 days old, one from now (each with a subflow, task
    runs, log lines and a result file of its own), the files dated as their runs."""
    old = [run_at(40, pipeline, "a"), run_at(35, pipeline, "b")]
    new = run_at(0, pipeline, "c")
    age_result_files()
    return old, new


# -- flowcore runs prune -------------------------------------------------------------------------


def test_prune_deletes_old_runs_whole_and_keeps_recent_ones(
    old_and_new: tuple[list[str], str],
) -> None:
    old, new = old_and_new
    counts = [tree_counts(run_id) for run_id in old]
    files = result_files()
    kept_new = tree_counts(new)
    result = invoke("runs", "prune", "--older-than", "30", "--yes")
    assert result.exit_code == 0, result.output
    runs, tasks, lines = (sum(c[i] for c in counts) for i in range(3))
    assert runs == 4 and tasks > 8 and lines > 8  # two runs with a subflow each
    said = re.fullmatch(
        r"deleted (\d+) runs that ended more than 30 days ago, with (\d+) task runs, "
        r"(\d+) log lines, \d+ spans and (\d+) result files\n",
        result.stdout,
    )
    assert said is not None, result.stdout
    assert [int(n) for n in said.groups()] == [runs, tasks, lines, 2]
    assert not any(exists(run_id) for run_id in old)
    assert tree_counts(new) == kept_new, "the recent run is whole"
    assert len(result_files()) == len(files) - 2, "the old runs' result files are gone"
    listed = on_store(lambda s: s.list_runs(limit=100))
    assert {r.id for r in listed if r.parent_run_id is None} == {new}
    again = invoke("runs", "prune", "--older-than", "30", "--yes")
    assert again.stdout.startswith("deleted 0 runs that ended more than 30 days ago")


def test_a_dry_run_counts_what_would_go_and_deletes_nothing(
    old_and_new: tuple[list[str], str],
) -> None:
    old, _ = old_and_new
    files = result_files()
    dry = invoke("runs", "prune", "--older-than", "30", "--dry-run", "--json")  # no prompt
    assert dry.exit_code == 0, dry.output
    counted = json.loads(dry.stdout)
    assert counted["dry_run"] is True and counted["keep_runs"] is None
    assert counted["older_than_days"] == 30 and counted["before"].endswith("Z")
    assert all(exists(run_id) for run_id in old) and result_files() == files
    real = json.loads(invoke("runs", "prune", "--older-than", "30", "--yes", "--json").stdout)
    assert real["dry_run"] is False
    keys = ("runs", "task_runs", "logs", "spans", "blobs")
    assert [counted[k] for k in keys] == [real[k] for k in keys]
    assert real["runs"] == 4 and real["blobs"] == 2
    text = invoke("runs", "prune", "--older-than", "1", "--dry-run")
    assert text.stdout.startswith("would delete 0 runs that ended more than 1 days ago")


def test_prune_asks_for_confirmation_without_yes(old_and_new: tuple[list[str], str]) -> None:
    old, _ = old_and_new
    declined = invoke("runs", "prune", "--older-than", "30", input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.output
    assert "delete the runs that ended more than 30 days ago" in declined.stderr
    assert declined.stdout == "", "the question goes to stderr: stdout stays the answer"
    assert all(exists(run_id) for run_id in old)
    accepted = invoke("runs", "prune", "--older-than", "30", "--keep-runs", "2", input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert "deleted 2 runs that ended more than 30 days ago (but the newest 2 runs)" in (
        accepted.stdout
    )
    assert [exists(run_id) for run_id in old] == [False, True], "the newest two are kept"


def test_a_running_run_stays_and_a_dead_one_goes_once_old() -> None:
    alive = FlowRunRecord(
        id="alive", name="etl", state=State.RUNNING, created=NOW - 40 * DAY,
        started=NOW - 40 * DAY, heartbeat=NOW, host="here", pid=os.getpid(), machine=MACHINE,
    )  # fmt: skip
    dead = FlowRunRecord(
        id="dead", name="etl", state=State.RUNNING, created=NOW - 40 * DAY,
        started=NOW - 40 * DAY, heartbeat=NOW - 39 * DAY, host="elsewhere", pid=1,
    )  # fmt: skip
    tasks = [TaskRunRecord(run_id="dead", seq=0, name="t", state=State.RUNNING, created=1.0)]
    on_store(lambda s: s.write(WriteBatch([alive, dead], tasks)))
    result = invoke("runs", "prune", "--older-than", "30", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["runs"] == 1
    assert exists("alive") and not exists("dead")


@pytest.mark.parametrize("age", ["0", "-1", "nan", "inf", "1e400", "36501", "soon", ""])
def test_a_bad_age_is_a_usage_error_naming_the_option(age: str) -> None:
    run_at(40, pipeline, "a")
    for command in (["runs", "prune", "--yes"], ["serve", "flows.py"]):
        option = "--run-retention-days" if command[0] == "serve" else "--older-than"
        result = invoke(*command, option, age)
        assert result.exit_code == 2, result.output
        last = result.stderr.rstrip().splitlines()[-1]
        assert last == (
            f"error: {option}: expected a number of days above 0 and at most 36500 "
            f"(0.5 is 12 hours), got {age!r}"
        )
    pruned = invoke_logs("prune", "--older-than", age, "--yes")
    assert pruned.exit_code == 2 and "--older-than: expected a number of days" in pruned.stderr
    assert len(on_store(lambda s: s.list_runs())) == 2, "nothing was pruned (a run, its subflow)"


def test_an_age_and_a_count_are_needed_in_range() -> None:
    missing = invoke("runs", "prune", "--yes")
    assert missing.exit_code == 2 and "--older-than" in missing.stderr
    keep = invoke("runs", "prune", "--older-than", "3", "--keep-runs", "-1", "--yes")
    assert keep.exit_code == 2
    assert "--keep-runs: expected a whole number from 0 to 1000000000" in keep.stderr


@pytest.mark.parametrize("command", [["runs", "prune"], ["logs", "prune"]])
def test_no_store_is_an_error_naming_the_fix_and_creates_nothing(command: list[str]) -> None:
    call = invoke_logs if command[0] == "logs" else invoke
    args = ["prune"] if command[0] == "logs" else command
    result = call(*args, "--older-than", "30", "--yes")
    assert result.exit_code == 1
    what = "log lines" if command[0] == "logs" else "runs"
    assert result.stderr == (
        f"error: there is no flowcore database at {db_path()}, so no {what} to prune; "
        "point FLOWCORE_HOME (or --home) at the folder holding flowcore.db, or "
        "FLOWCORE_DB_URL at the store\n"
    )
    assert not home().exists(), "a prune creates no store"


def test_cached_and_asset_values_keep_their_files_and_still_serve() -> None:
    """What a cache entry or an asset materialisation holds outlives the run that made it:
    its file is still read after the run is pruned, and after `flowcore cache clear`."""
    run_at(40, caching, "k")
    graph = AssetGraph([table, size])

    async def materialise(*keys: str) -> str:
        async with flowcore.Engine() as engine:
            result = await materialize_async(
                list(keys), graph=graph, engine=engine, only_stale=False
            )
            assert result.ok, result.failed
            assert engine.last_run is not None
            return engine.last_run.id

    age_runs(anyio.run(materialise, "table"), 40)
    age_result_files()
    files = result_files()
    assert len(files) == 2  # the cached result, the asset's value
    result = invoke("runs", "prune", "--older-than", "30", "--yes", "--json")
    assert json.loads(result.stdout)["runs"] == 2
    assert result_files() == files
    anyio.run(materialise, "size")  # reads the asset's value back
    hit = run_at(0, caching, "k")
    [task] = on_store(lambda s: s.list_task_runs(hit))
    assert task.state is State.CACHED, "the cache entry still serves its result"
    # Clearing the cache deletes the files nothing refers to: never an asset's value
    # (it did: only task runs and cache entries were counted as referring to files).
    cleared = invoke("cache", "clear", "--yes")
    assert cleared.exit_code == 0, cleared.output
    [materialisation] = on_store(lambda s: s.asset_history("table", limit=1))
    assert materialisation.value_ref in result_files()
    anyio.run(materialise, "size")  # the asset's value outlives the cache


# -- flowcore logs prune ----------------------------------------------------------------------


def write_lines() -> None:
    run = FlowRunRecord(id="kept", name="etl", state=State.COMPLETED, created=NOW, ended=NOW)
    lines = [
        LogRecord(run_id="kept", seq=None, task=None, time=when, level=20, logger="app",
                  message=f"at {when}")
        for when in (NOW - 10 * DAY, NOW - 8 * DAY, NOW - DAY, NOW)
    ]  # fmt: skip
    on_store(lambda s: s.write(WriteBatch([run], logs=lines)))


def test_logs_prune_deletes_old_lines_of_kept_runs() -> None:
    write_lines()
    dry = invoke_logs("prune", "--older-than", "7", "--dry-run")
    assert dry.stdout == "would delete 2 log lines written more than 7 days ago\n"
    declined = invoke_logs("prune", "--older-than", "7", input="n\n")
    assert declined.exit_code == 1 and "delete the log lines" in declined.stderr
    result = invoke_logs("prune", "--older-than", "7", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["logs"] == 2
    left = on_store(lambda s: s.list_logs("kept"))
    assert [line.time for line in left] == [NOW - DAY, NOW]
    assert exists("kept")


# -- the SQLite store's prune ---------------------------------------------------------------------


def big_run(run_id: str, tasks: int = 55, lines: int = 23) -> WriteBatch:
    run = FlowRunRecord(
        id=run_id, name="etl", state=State.COMPLETED, created=100.0, ended=200.0,
        task_count=tasks, trace_id="1" * 32,
    )  # fmt: skip
    return WriteBatch(
        [run],
        [TaskRunRecord(run_id, i, "t", State.COMPLETED, 100.0 + i) for i in range(tasks)],
        logs=[LogRecord(run_id, None, None, 100.0, 20, "app", f"{i}") for i in range(lines)],
    )


@pytest.mark.anyio
async def test_a_big_run_goes_over_several_transactions_and_a_stopped_prune_leaves_no_orphan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(retention, "ROW_BUDGET", 10)  # 78 rows: 8 transactions
    async with SQLiteStore(db_path()) as store:
        await store.write(big_run("big"))
        io = store._io
        real_write = io.write
        calls = 0

        async def failing_write(body: Any, rows: int) -> Any:
            nonlocal calls
            calls += 1
            if calls == 4:
                raise StoreError("the disk is full")
            return await real_write(body, rows)

        monkeypatch.setattr(io, "write", failing_write)
        with pytest.raises(StoreError, match="disk is full"):
            await store.prune_runs(500.0)
        # Stopped half-way: the run is there, with what is left of its rows.
        assert (await store.get_run("big")).id == "big"
        left = len(await store.list_task_runs("big")) + len(await store.list_logs("big"))
        assert left == 78 - 30
        monkeypatch.setattr(io, "write", real_write)
        got = await store.prune_runs(500.0)
        assert got == PruneCount(runs=1, task_runs=25, logs=23)
        with pytest.raises(RunNotFound):
            await store.get_run("big")
        assert await store.list_task_runs("big") == []
        assert await store.list_logs("big") == []


class LockedOnce:
    """A connection whose ``n``-th statement fails once as locked (another process took
    the database): the transaction is rolled back, and tried again."""

    def __init__(self, db: sqlite3.Connection, n: int) -> None:
        self.db, self.n = db, n

    def execute(self, sql: str, params: Any = ()) -> Any:
        self.n -= 1
        if self.n == 0:
            raise sqlite3.OperationalError("database is locked")
        return self.db.execute(sql, params)

    def executemany(self, sql: str, params: Any) -> Any:
        return self.db.executemany(sql, params)


@pytest.mark.anyio
async def test_a_transaction_tried_again_after_a_lock_deletes_everything_it_had_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 55 task runs, 23 log lines, 40 rows a transaction: the second deletes the last 15
    # task runs and then every log line; its log statement meets a lock, so it is rolled
    # back and tried again. It used to be tried again as if its task runs were gone.
    monkeypatch.setattr(retention, "ROW_BUDGET", 40)
    async with SQLiteStore(db_path()) as store:
        await store.write(big_run("big"))
        io = store._io
        real_write = io.write
        calls = 0

        async def locked_write(body: Any, rows: int) -> Any:
            nonlocal calls
            calls += 1
            if calls != 2:
                return await real_write(body, rows)
            tried = 0

            def once_locked(db: sqlite3.Connection) -> Any:
                nonlocal tried
                tried += 1
                return body(LockedOnce(db, 2) if tried == 1 else db)

            return await real_write(once_locked, rows)

        monkeypatch.setattr(io, "write", locked_write)
        got = await store.prune_runs(500.0)
        assert got == PruneCount(runs=1, task_runs=55, logs=23)
        with pytest.raises(RunNotFound):
            await store.get_run("big")
    with closing(sqlite3.connect(db_path())) as db:
        left = db.execute("SELECT count(*) FROM task_runs WHERE run_id = 'big'").fetchone()
    assert left == (0,), "no task run of the pruned run is left behind"


#: What a prune may scan: the ids it is given, the tree it builds, the index of runs by
#: creation (walked a page of top-level runs at a time) and the partial index of unfinished
#: runs (few).
ALLOWED_SCANS = (
    "SCAN json_each",
    "SCAN tree",
    "USING INDEX flow_runs_created",
    "USING INDEX flow_runs_active",
)


def test_a_prune_walks_indexes_never_a_whole_table() -> None:
    """The statements of a prune, planned on a database of this schema: each reads
    through an index (a prune of a million runs reads what it deletes)."""
    on_store(lambda s: s.list_runs())  # a database of the current schema
    statements = [
        retention._CANDIDATES.format(upto=retention._UPTO),
        retention._NEWEST,
        retention._RESUMED,
        retention._TREE,
        retention._SHARED_TRACES,
        retention._COUNT_LOGS,
    ]
    for statement in retention._statements("[]", "[]", "[]", 0, 0):
        statements += [statement.direct, statement.limited]
    with closing(sqlite3.connect(db_path())) as db:
        for sql in statements:
            plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", [0] * sql.count("?"))]
            scans = [
                step
                for step in plan
                if step.startswith("SCAN") and not any(ok in step for ok in ALLOWED_SCANS)
            ]
            assert not scans, f"{sql}\n{plan}"
    assert retention.VALUE_REF_KEY in " ".join(MIGRATIONS[13])


# -- flowcore serve's retention -------------------------------------------------------------


@flowcore.flow
async def idle() -> None:
    pass


def old_run(run_id: str, days: float = 40) -> FlowRunRecord:
    created = NOW - days * DAY
    return FlowRunRecord(run_id, "etl", State.COMPLETED, created, ended=created + 1)


@pytest.mark.anyio
async def test_serve_prunes_old_runs_when_it_starts(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    await store.write(WriteBatch([old_run("old"), old_run("recent", days=1)]))
    caplog.set_level(logging.INFO, logger="flowcore.serve")
    async with (
        flowcore.Engine(store, tracing=False) as engine,
        Server([idle], engine=engine, run_retention_days=30) as server,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(server.serve_forever)
        with anyio.fail_after(60):
            await server.wait_retention()
        server.stop()
    assert [r.id for r in await store.list_runs()] == ["recent"]
    assert (
        "retention: deleted 1 run that ended more than 30 days ago, with 0 task runs, "
        "0 log lines, 0 spans and 0 result files" in caplog.text
    )


@pytest.mark.anyio
async def test_the_retention_variable_sets_it_and_a_bad_one_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with flowcore.Engine("memory", tracing=False) as engine:
        assert Server([idle], engine=engine).run_retention_days is None
        monkeypatch.setenv("FLOWCORE_RUN_RETENTION_DAYS", "0.5")
        assert Server([idle], engine=engine).run_retention_days == 0.5
        assert Server([idle], engine=engine, run_retention_days=3).run_retention_days == 3
        for bad in ("0", "-2", "nan", "inf", "a month"):
            monkeypatch.setenv("FLOWCORE_RUN_RETENTION_DAYS", bad)
            with pytest.raises(ConfigurationError) as error:
                Server([idle], engine=engine)
            assert str(error.value) == (
                "FLOWCORE_RUN_RETENTION_DAYS must be a number of days above 0 (0.5 is 12 "
                f"hours), got {bad!r}; unset it to keep runs for ever"
            )
        with pytest.raises(ConfigurationError, match="`run_retention_days` must be"):
            Server([idle], engine=engine, run_retention_days=0)


class Unpruned:
    """A memory store without the RunRetention role (as a plugin of an older contract)."""

    def __init__(self) -> None:
        self._inner = MemoryStore()

    def __getattr__(self, name: str) -> Any:
        if name in ("prune_runs", "prune_logs"):
            raise AttributeError(name)
        return getattr(self._inner, name)


@pytest.mark.anyio
async def test_a_store_that_cannot_prune_is_named() -> None:
    store: Any = Unpruned()
    assert not isinstance(store, RunRetention)
    async with flowcore.Engine(store, tracing=False) as engine:
        with pytest.raises(ConfigurationError) as error:
            Server([idle], engine=engine, run_retention_days=30)
    assert "cannot prune runs" in str(error.value) and ":memory:" in str(error.value)
    assert "unset FLOWCORE_RUN_RETENTION_DAYS" in str(error.value)


SERVED = textwrap.dedent(
    """
    import flowcore


    @flowcore.flow
    async def idle() -> None:
        pass
    """
)


@pytest.mark.slow
def test_flowcore_serve_prunes_with_run_retention_days(tmp_path: Path) -> None:
    old, new = run_at(40, pipeline, "a"), run_at(0, pipeline, "b")
    (tmp_path / "served.py").write_text(SERVED)
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flowcore", "serve", "served.py:idle",
             "--run-retention-days", "30"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while "retention: deleted" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"no retention logged:\n{log.read_text()}"
            time.sleep(0.1)
        proc.terminate()
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    match = re.search(r"retention: deleted (\d+) runs that ended more than 30 days ago", text)
    assert match and int(match.group(1)) == 2, text
    assert not exists(old) and exists(new)
