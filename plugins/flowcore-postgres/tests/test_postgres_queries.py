"""The optional role ``RunQueries`` on PostgreSQL: the runs list filtered and paged by an
index (a run's tags kept in ``run_tags`` by the batch statement), task graphs by edges,
and what keeping tags costs the write path (one statement a batch, tags sent once)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from asyncpg.connection import LoggedQuery

import flowcore
from flowcore.errors import ConfigurationError
from flowcore.records import FlowRunRecord, TaskRunRecord, WriteBatch
from flowcore.states import State
from flowcore.store.base import RunQueries
from flowcore_postgres import PostgresStore
from flowcore_postgres.url import parse_url

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresStore]:
    async with PostgresStore(pg_url) as opened:
        yield opened


async def _ids(store: PostgresStore, **filters: Any) -> list[str]:
    return [r.id for r in await store.filter_runs(**filters)]


class _Sent:
    """The statements the store's writer connection sends, while attached."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def __call__(self, record: LoggedQuery) -> None:
        self.queries.append(record.query)

    @property
    def tagged(self) -> list[bool | None]:
        """For each statement sent, whether it is a batch statement that writes run tags
        (``False``: a batch statement without them; ``None``: another statement)."""
        return [("run_tags" in q) if "WITH flows AS" in q else None for q in self.queries]


async def _watch(store: PostgresStore) -> tuple[_Sent, asyncpg.Connection]:
    # The writer's first statement is preceded by asyncpg's own queries (settings, types).
    await store.write(WriteBatch([FlowRunRecord("warmup", "etl", State.COMPLETED, 1.0)]))
    sent = _Sent()
    writer = await store._io._writer_connection()
    writer.add_query_logger(sent)
    return sent, writer


def test_the_store_plays_run_queries(pg_url: str) -> None:
    # The contract's RunQueries cases (and the web UI's fast pages) only run on a store
    # that has the role: without it they pass by doing nothing.
    assert isinstance(PostgresStore(pg_url), RunQueries)


# -- a store of a few thousand runs ------------------------------------------------------

_TAGS = ["api", "db", "slow", "nightly", "ml"]


async def _write_thousands(store: PostgresStore, rnd: random.Random) -> dict[str, Any]:
    """3,000 runs (some subflows), created in threes at the same time (ties are broken by
    id), their tagged task runs written as the recorder writes them: in the batch of a new
    run, in later batches, and some after the run ended. Returns the model to read back."""
    runs: list[FlowRunRecord] = []
    tags_of: dict[str, set[str]] = {}
    for i in range(3000):
        run_id = f"{rnd.getrandbits(64):016x}"
        parent = runs[-1].id if i % 10 == 9 else None  # a subflow of the run before it
        state = rnd.choice([State.COMPLETED] * 6 + [State.FAILED, State.RUNNING])
        runs.append(
            FlowRunRecord(run_id, f"flow{i % 4}", state, 1000.0 + i // 3, parent_run_id=parent)
        )
        tags_of[run_id] = set()
    tasks: dict[str, list[TaskRunRecord]] = {}
    for run in runs:
        tasks[run.id] = []
        for seq in range(rnd.randrange(4)):
            tags = rnd.sample(_TAGS, rnd.choice([0, 0, 1, 1, 2])) or None
            tasks[run.id].append(
                TaskRunRecord(run.id, seq, "step", State.COMPLETED, 1.0, tags=tags)
            )
            tags_of[run.id].update(tags or ())
    for start in range(0, len(runs), 300):
        chunk = runs[start : start + 300]
        first = [t for r in chunk for t in tasks[r.id][:1]]
        later = [t for r in chunk for t in tasks[r.id][1:]]
        # New runs with their first task runs, then the rest in the next batch; a third of
        # the runs end in the first batch, so their later task runs arrive after the end.
        await store.write(WriteBatch(chunk, first))
        await store.write(WriteBatch([], later))
    return {"runs": runs, "tags": tags_of}


def _want(model: dict[str, Any], **f: Any) -> list[str]:
    """What filter_runs should give: newest first, ties by id, then the page."""
    runs = [
        r
        for r in model["runs"]
        if (f.get("name") is None or r.name == f["name"])
        and (f.get("state") is None or r.state == f["state"])
        and (f.get("since") is None or r.created >= f["since"])
        and (f.get("until") is None or r.created < f["until"])
        and (f.get("tag") is None or f["tag"] in model["tags"][r.id])
    ]
    runs.sort(key=lambda r: (r.created, r.id), reverse=True)
    offset, limit = f.get("offset", 0), f.get("limit", 50)
    return [r.id for r in runs[offset : offset + limit]]


async def _rows_read(store: PostgresStore, filters: dict[str, Any]) -> int:
    """How many ``flow_runs`` rows the page's query reads, by its plan (EXPLAIN ANALYZE)."""
    captured: list[tuple[str, tuple[Any, ...]]] = []
    fetch = store._io.fetch

    async def capture(sql: str, *args: Any) -> list[asyncpg.Record]:
        captured.append((sql, args))
        return await fetch(sql, *args)

    store._io.fetch = capture  # type: ignore[method-assign]
    try:
        await store.filter_runs(**filters)
    finally:
        store._io.fetch = fetch  # type: ignore[method-assign]
    [(sql, args)] = captured
    conn = await asyncpg.connect(parse_url(store.url.dsn).dsn)
    try:
        await conn.execute("SET search_path = flowcore")
        plan = json.loads(await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args))
    finally:
        await conn.close()

    def read(node: dict[str, Any]) -> int:
        # Rows a scan of flow_runs visited: those it gave and those its filter dropped.
        own = 0
        if node.get("Relation Name") == "flow_runs":
            per_loop = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
            own = round(per_loop * node["Actual Loops"])
        return own + sum(read(child) for child in node.get("Plans", []))

    return read(plan[0]["Plan"])


async def test_a_page_by_time_range_and_tag_reads_back_right_on_thousands_of_runs(
    store: PostgresStore,
) -> None:
    rnd = random.Random(12)
    model = await _write_thousands(store, rnd)
    checks: list[dict[str, Any]] = [
        {"tag": "api", "since": 1300.0, "until": 1700.0},
        {"tag": "api", "since": 1300.0, "until": 1700.0, "offset": 50},
        {"tag": "db", "since": 1300.5, "until": 1301.0},  # a range within one created time
        {"tag": "nightly", "since": 1100.0, "until": 1900.0, "offset": 37, "limit": 9},
        {"tag": "ml", "until": 1200.0, "state": "Failed"},
        {"tag": "slow", "since": 1800.0, "name": "flow2", "limit": 200},
        {"tag": "api", "since": 1999.0},
        {"tag": "api", "since": 2000.0},  # past the newest run
        {"tag": "nope", "since": 1000.0},
        {"since": 1450.0, "until": 1550.0, "offset": 20, "limit": 30},
        {"name": "flow1", "state": "Running", "until": 1500.0},
        {"tag": "db"},
        {"tag": "db", "offset": 3000},
    ]
    for filters in checks:
        got = await _ids(store, **filters)
        want = _want(model, **filters)
        assert got == want, (filters, got[:5], want[:5])
        assert len(got) == len(want)
    assert _want(model, tag="api", since=1300.0, until=1700.0, limit=10**6), "no empty check"
    # Every page of a filter, one after the other: each matching run once, in order.
    filters = {"tag": "api", "since": 1200.0, "until": 1800.0}
    paged: list[str] = []
    while page := await _ids(store, **filters, offset=len(paged), limit=97):
        paged += page
    assert paged == _want(model, **filters, limit=10**6)
    # Subflows carry the tags of their own task runs, not of their parent's.
    subflows = [r for r in model["runs"] if r.parent_run_id is not None]
    for sub in subflows[:30]:
        for tag in _TAGS:
            found = sub.id in await _ids(store, tag=tag, since=sub.created, until=sub.created + 1)
            assert found == (tag in model["tags"][sub.id]), (sub.id, tag)


async def _write_many(store: PostgresStore, n: int, rnd: random.Random) -> dict[str, Any]:
    """``n`` runs of one task run each (its tags: none, one or two), in batches of 2,000."""
    runs: list[FlowRunRecord] = []
    tags_of: dict[str, set[str]] = {}
    for start in range(0, n, 2000):
        chunk, tasks = [], []
        for i in range(start, min(n, start + 2000)):
            state = rnd.choice([State.COMPLETED] * 6 + [State.FAILED, State.RUNNING])
            run = FlowRunRecord(f"run{i:06d}", f"flow{i % 4}", state, 1000.0 + i)
            tags = rnd.sample(_TAGS, rnd.choice([0, 1, 2]))
            chunk.append(run)
            tasks.append(TaskRunRecord(run.id, 0, "step", State.COMPLETED, 1.0, tags=tags))
            tags_of[run.id] = set(tags)
        runs += chunk
        await store.write(WriteBatch(chunk, tasks))
    return {"runs": runs, "tags": tags_of}


async def test_a_page_reads_the_runs_of_its_tag_and_range_not_every_run(
    store: PostgresStore, pg_url: str
) -> None:
    # Enough runs for an index walk to beat reading them all (on a few thousand, the
    # planner rightly reads the table for a page far enough back).
    model = await _write_many(store, 30_000, random.Random(5))
    conn = await asyncpg.connect(parse_url(pg_url).dsn)
    try:
        await conn.execute("ANALYZE flowcore.flow_runs, flowcore.run_tags")  # as autovacuum does
    finally:
        await conn.close()
    api_range: dict[str, Any] = {"tag": "api", "since": 12_000.0, "until": 20_000.0}
    span: dict[str, Any] = {"since": 12_000.0, "until": 20_000.0}
    pages: list[tuple[dict[str, Any], dict[str, Any]]] = [
        (api_range, api_range),
        ({**api_range, "offset": 500}, api_range),
        ({"tag": "ml", "since": 25_000.0, "state": "Failed"}, {"tag": "ml", "since": 25_000.0}),
        ({"tag": "db", "offset": 200}, {"tag": "db"}),
        ({**span, "offset": 500}, span),
        ({"name": "flow3", "until": 20_000.0}, {"name": "flow3", "until": 20_000.0}),
        ({"state": "Running", "offset": 100}, {"state": "Running"}),
    ]
    # Each page, and the filters its index bounds (the others are checked on the runs the
    # index walk gives): it reads no run outside those, and far fewer than every run.
    for filters, indexed in pages:
        bound = len(_want(model, **indexed, limit=10**6))
        read = await _rows_read(store, filters)
        assert read <= bound < len(model["runs"]) / 3, (filters, read, bound)
        # A walk from the newest stops once the page is full: not every run of the index.
        skipped_and_shown = filters.get("offset", 0) + 50
        if len(_want(model, **filters, limit=10**6)) >= skipped_and_shown:
            assert read < bound, (filters, read, bound)


# -- the write path -----------------------------------------------------------------------


async def test_a_batch_of_a_new_run_and_its_tagged_task_runs_is_one_statement(
    store: PostgresStore,
) -> None:
    sent, writer = await _watch(store)
    try:
        # The run is new in this very batch: its row is not there for the statement's
        # other clauses to read, and its tags are kept all the same.
        run = FlowRunRecord("r1", "etl", State.RUNNING, 5.0)
        tasks = [
            TaskRunRecord("r1", seq, "step", State.COMPLETED, 1.0, tags=["api", "db"])
            for seq in range(2000)
        ]
        await store.write(WriteBatch([run], tasks))
    finally:
        writer.remove_query_logger(sent)
    assert sent.tagged == [True], sent.queries
    assert await _ids(store, tag="api") == ["r1"]
    assert await _ids(store, tag="db", since=5.0, until=5.5) == ["r1"]
    assert await store.count_task_runs("r1") == {"Completed": 2000}


async def test_a_run_going_on_sends_its_tags_once(store: PostgresStore) -> None:
    run = FlowRunRecord("r1", "etl", State.RUNNING, 5.0)
    sent, writer = await _watch(store)
    try:
        await store.write(
            WriteBatch([run], [TaskRunRecord("r1", 0, "a", State.COMPLETED, 1.0, tags=["api"])])
        )
        for seq in range(1, 4):  # the same tags, batch after batch: the untagged statement
            await store.write(
                WriteBatch([], [TaskRunRecord("r1", seq, "a", State.COMPLETED, 1.0, tags=["api"])])
            )
        await store.write(
            WriteBatch([], [TaskRunRecord("r1", 9, "b", State.COMPLETED, 1.0, tags=["api", "db"])])
        )
        run.state = State.COMPLETED
        await store.write(
            WriteBatch([run], [TaskRunRecord("r1", 10, "b", State.COMPLETED, 1.0, tags=["db"])])
        )
        # After its end, a run's tags are sent again (and skipped where they are).
        await store.write(
            WriteBatch([], [TaskRunRecord("r1", 11, "c", State.CRASHED, 1.0, tags=["db", "ml"])])
        )
    finally:
        writer.remove_query_logger(sent)
    assert sent.tagged == [True, False, False, False, True, False, True], sent.queries
    for tag in ("api", "db", "ml"):
        assert await _ids(store, tag=tag) == ["r1"], tag


async def test_tags_of_a_batch_that_failed_are_sent_again(store: PostgresStore) -> None:
    run = FlowRunRecord("r1", "etl", State.RUNNING, 5.0)
    await store.write(WriteBatch([run]))
    tagged = TaskRunRecord("r1", 0, "step", State.COMPLETED, 1.0, tags=["api"])
    refused = TaskRunRecord("r1", 1, "bad\x00name", State.COMPLETED, 1.0)  # text holds no NUL
    with pytest.raises(ValueError, match="refused a value"):  # the writer escapes, retries
        await store.write(WriteBatch([run], [tagged, refused]))
    assert await _ids(store, tag="api") == []
    await store.write(WriteBatch([], [tagged]))  # the recorder writes it again
    assert await _ids(store, tag="api") == ["r1"]


async def test_a_tag_is_any_str_compared_whole(store: PostgresStore) -> None:
    odd = ["nul\x00inside", "ünï ✓", "a\x1fb", "a", "a\\"]
    await store.write(WriteBatch([FlowRunRecord("r1", "etl", State.RUNNING, 5.0)]))
    await store.write(
        WriteBatch(
            [],
            [
                TaskRunRecord("r1", n, "step", State.COMPLETED, 1.0, tags=[t])
                for n, t in enumerate(odd)
            ],
        )
    )
    await store.write(WriteBatch([FlowRunRecord("r2", "etl", State.RUNNING, 6.0)]))
    for tag in odd:
        assert await _ids(store, tag=tag) == ["r1"], tag
    for tag in ("nul", "nul\x00", "b", "", "A", "ünï", "\\"):
        assert await _ids(store, tag=tag) == [], tag


async def test_tags_written_by_another_handle_after_the_run_ended(pg_url: str) -> None:
    async with PostgresStore(pg_url) as engine, PostgresStore(pg_url) as reader:
        await engine.write(WriteBatch([FlowRunRecord("r1", "etl", State.COMPLETED, 5.0)]))
        # A reader marking a task run crashed writes it through its own handle, which
        # never wrote the run: the stored run's created time is taken.
        await reader.write(
            WriteBatch([], [TaskRunRecord("r1", 3, "step", State.CRASHED, 1.0, tags=["api"])])
        )
        assert await _ids(engine, tag="api", since=5.0, until=5.1) == ["r1"]
        # A task run of a run recorded nowhere has no run to tag (as on SQLite).
        await reader.write(
            WriteBatch([], [TaskRunRecord("ghost", 0, "step", State.CRASHED, 1.0, tags=["api"])])
        )
        assert await _ids(engine, tag="api") == ["r1"]


async def test_filter_runs_refuses_a_bad_page_naming_it(store: PostgresStore) -> None:
    with pytest.raises(ConfigurationError, match="`limit` must be >= 1, got 0"):
        await store.filter_runs(limit=0)
    with pytest.raises(ConfigurationError, match="`offset` must be >= 0, got -1"):
        await store.filter_runs(offset=-1)
    with pytest.raises(ConfigurationError, match="`limit`"):
        await store.list_runs(limit=0)


# -- task graphs ---------------------------------------------------------------------------


async def test_task_run_edges_page_a_big_run(store: PostgresStore) -> None:
    await store.write(WriteBatch([FlowRunRecord("r1", "etl", State.RUNNING, 5.0)]))
    tasks = [
        TaskRunRecord(
            "r1", seq, f"t{seq % 3}", State.COMPLETED, 1.0,
            parent_seq=seq - 1 if seq % 5 == 0 and seq else None,
            upstream=[seq - 2, seq - 1] if seq % 7 == 0 and seq > 1 else None,
            inputs=b"\x91\xa4tags" * 50,  # bodies are decoded for their edges only
        )
        for seq in range(5000)
    ]  # fmt: skip
    await store.write(WriteBatch([], tasks))
    edges: list[tuple[int, str, str, int | None, list[int] | None]] = []
    while page := await store.task_run_edges("r1", after=edges[-1][0] if edges else -1, limit=999):
        edges += page
    want = [(t.seq, t.name, "Completed", t.parent_seq, t.upstream) for t in tasks]
    assert edges == want
    assert await store.task_run_edges("r1", after=4990) == want[4991:]


# -- real flows ----------------------------------------------------------------------------


@flowcore.task(tags=["api"])
async def fetch(i: int) -> int:
    return i


@flowcore.task(tags=["db", "slow"])
def store_rows(rows: list[int]) -> int:
    return len(rows)


@flowcore.flow
async def load(n: int) -> int:
    return await store_rows([await fetch(i) for i in range(n)])


@flowcore.flow
async def ingest(n: int) -> int:
    got = await asyncio.gather(*(fetch(i) for i in range(n)))
    return len(got) + await load(3)  # a subflow: its task runs tag it, not its parent


async def test_the_runs_of_real_flows_are_found_by_their_tasks_tags(pg_url: str) -> None:
    async with flowcore.Engine(store=pg_url) as engine:
        assert await ingest(500) == 503
        assert engine.last_run is not None
        parent = engine.last_run
    async with PostgresStore(pg_url) as store:
        [child] = await store.child_runs(parent.id)
        assert await _ids(store, tag="api") == [child.id, parent.id]
        assert await _ids(store, tag="db") == [child.id]
        assert await _ids(store, tag="slow", name="load", state="Completed") == [child.id]
        assert await _ids(store, tag="api", until=child.created) == [parent.id]
        graph = await store.task_run_edges(parent.id)
        assert [(seq, state) for seq, _, state, _, _ in graph] == [
            (seq, "Completed") for seq in range(500)
        ]
