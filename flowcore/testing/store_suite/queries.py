"""Cases on finding runs back: list_runs, get_run, task run pages and counts, child runs.

The readers (``flowcore runs``, the views, resume) rely on these answers being
ordered, filtered and paged the same way by every store, and on get_run's id
prefixes resolving the same way, so each rule is a case of its own.
"""

from __future__ import annotations

import random
import re
from collections.abc import Awaitable
from typing import Any

from ...errors import ConfigurationError, RunNotFound
from ...records import FlowRunRecord, TaskRunRecord, WriteBatch
from ...states import State
from ...store.base import RunQueries, Store
from .assertions import differs, raises
from .cases import Cases
from .records import flow_run, task_run

__all__ = ["CASES"]

CASES = Cases()


# -- list_runs --------------------------------------------------------------------------


async def _write_listing_runs(store: Store) -> None:
    runs = [
        flow_run("r1", created=100.0, name="etl", state=State.COMPLETED),
        flow_run("r2", created=300.0, name="report", state=State.FAILED),
        flow_run("r3", created=200.0, name="etl", state=State.FAILED),
        flow_run("r4", created=500.0, name="etl", state=State.RUNNING),
        flow_run("r5", created=400.0, name="report", state=State.COMPLETED),
    ]
    random.Random(3).shuffle(runs)
    await store.write(WriteBatch(runs[:2], []))
    await store.write(WriteBatch(runs[2:], []))


async def _ids(runs: Awaitable[list[FlowRunRecord]]) -> list[str]:
    return [r.id for r in await runs]


@CASES.case("runs: list_runs is newest first")
async def _list_runs_newest_first(store: Store) -> None:
    await _write_listing_runs(store)
    got = await _ids(store.list_runs())
    assert got == ["r4", "r5", "r2", "r3", "r1"], differs(
        "list_runs() ids (created 500, 400, 300, 200, 100)", got, ["r4", "r5", "r2", "r3", "r1"]
    )


@CASES.case("runs: list_runs filters by name and state")
async def _list_runs_filters(store: Store) -> None:
    await _write_listing_runs(store)
    checks: list[tuple[dict[str, Any], list[str]]] = [
        ({"name": "etl"}, ["r4", "r3", "r1"]),
        ({"state": "Failed"}, ["r2", "r3"]),
        ({"state": State.COMPLETED}, ["r5", "r1"]),
        ({"name": "report", "state": "Completed"}, ["r5"]),
        ({"name": "nope"}, []),
        ({"name": "etl", "state": "Cancelled"}, []),
    ]
    for kwargs, want in checks:
        got = await _ids(store.list_runs(**kwargs))
        assert got == want, differs(f"ids of list_runs(**{kwargs})", got, want)


@CASES.case("runs: list_runs returns at most `limit` runs")
async def _list_runs_limit(store: Store) -> None:
    await _write_listing_runs(store)
    got = await _ids(store.list_runs(limit=2))
    assert got == ["r4", "r5"], differs("list_runs(limit=2)", got, ["r4", "r5"])
    got = await _ids(store.list_runs(limit=1, name="etl", state="Failed"))
    assert got == ["r3"], differs("list_runs(limit=1, name='etl', state='Failed')", got, ["r3"])
    count = len(await store.list_runs(limit=1000))
    assert count == 5, differs("len(list_runs(limit=1000)) of 5 runs", count, 5)


@CASES.case("runs: list_runs returns 50 runs by default")
async def _list_runs_default_limit(store: Store) -> None:
    await store.write(
        WriteBatch([flow_run(f"run{i:03d}", created=float(i)) for i in range(60)], [])
    )
    got = await _ids(store.list_runs())
    want = [f"run{i:03d}" for i in range(59, 9, -1)]
    assert got == want, differs("list_runs() of 60 runs", got, want)


@CASES.case("runs: list_runs with a limit below 1 is a ConfigurationError")
async def _list_runs_bad_limit(store: Store) -> None:
    await _write_listing_runs(store)
    for limit in (0, -1):
        error = await raises(
            ConfigurationError, store.list_runs(limit=limit), f"list_runs(limit={limit})"
        )
        assert "limit" in str(error), f"the error should name `limit`: {error}"


def _queries(store: Store) -> RunQueries | None:
    """The store's optional role :class:`RunQueries`, checked when it has it."""
    return store if isinstance(store, RunQueries) else None


@CASES.case("runs: filter_runs (RunQueries) filters by a time range, name, state, and pages")
async def _filter_runs_time_range(store: Store) -> None:
    queries = _queries(store)
    if queries is None:
        return  # an optional role: the views read without it
    await _write_listing_runs(store)
    checks: list[tuple[dict[str, Any], list[str]]] = [
        ({"since": 300.0}, ["r4", "r5", "r2"]),  # since is included
        ({"until": 300.0}, ["r3", "r1"]),  # until is not
        ({"since": 150.0, "until": 450.0}, ["r5", "r2", "r3"]),
        ({"since": 150.0, "until": 450.0, "name": "etl"}, ["r3"]),
        ({"since": 150.0, "state": "Failed"}, ["r2", "r3"]),
        ({"since": 600.0}, []),
        ({"offset": 1, "limit": 2}, ["r5", "r2"]),
        ({"offset": 2, "name": "etl"}, ["r1"]),
        ({"offset": 5}, []),
        ({"since": 150.0, "offset": 1, "limit": 1}, ["r5"]),
    ]
    for kwargs, want in checks:
        got = await _ids(queries.filter_runs(**kwargs))
        assert got == want, differs(f"ids of filter_runs(**{kwargs})", got, want)
    refused: list[dict[str, Any]] = [{"offset": -1}, {"limit": 0}]
    for bad in refused:
        error = await raises(
            ConfigurationError, queries.filter_runs(**bad), f"filter_runs(**{bad})"
        )
        [name] = bad
        assert name in str(error), f"the error should name `{name}`: {error}"


@CASES.case("runs: filter_runs (RunQueries) filters by a tag of the run's task runs")
async def _filter_runs_tag(store: Store) -> None:
    queries = _queries(store)
    if queries is None:
        return
    await _write_listing_runs(store)
    odd = "a\x1fb\\"  # a separator and a backslash: tags are compared whole
    await store.write(
        WriteBatch(
            [],
            [
                task_run("r1", 0, tags=["api"]),
                task_run("r1", 1, tags=["api", "db"]),
                task_run("r3", 0, tags=["db"]),
                task_run("r3", 1),
                task_run("r5", 0, tags=[odd]),
            ],
        )
    )
    await store.write(WriteBatch([], [task_run("r4", 0, tags=["api"])]))  # a later batch
    checks: list[tuple[dict[str, Any], list[str]]] = [
        ({"tag": "api"}, ["r4", "r1"]),
        ({"tag": "db"}, ["r3", "r1"]),
        ({"tag": "db", "state": "Failed"}, ["r3"]),
        ({"tag": "api", "until": 400.0}, ["r1"]),
        ({"tag": odd}, ["r5"]),
        ({"tag": "a"}, []),
        ({"tag": "b"}, []),
        ({"tag": ""}, []),
        ({"tag": "ap"}, []),
    ]
    for kwargs, want in checks:
        got = await _ids(queries.filter_runs(**kwargs))
        assert got == want, differs(f"ids of filter_runs(**{kwargs})", got, want)


@CASES.case("runs: filter_runs (RunQueries) finds a run written with its tagged task runs")
async def _filter_runs_tag_same_batch(store: Store) -> None:
    """A service's run: the run and its task runs reach the store in one batch (a store
    that looks the run up among those already stored would miss it)."""
    queries = _queries(store)
    if queries is None:
        return
    await store.write(
        WriteBatch([flow_run("new", 500.0)], [task_run("new", 0, tags=["api"]), task_run("new", 1)])
    )
    got = await _ids(queries.filter_runs(tag="api"))
    assert got == ["new"], differs("ids of filter_runs(tag='api')", got, ["new"])


# -- get_run ----------------------------------------------------------------------------


async def _write_ids(store: Store, *ids: str) -> None:
    await store.write(
        WriteBatch([flow_run(run_id, created=float(n)) for n, run_id in enumerate(ids)], [])
    )


@CASES.case("runs: get_run finds a run by its exact id")
async def _get_run_exact(store: Store) -> None:
    await _write_ids(store, "abc123", "abd456", "ffff00")
    run = await store.get_run("abd456")
    want = flow_run("abd456", created=1.0)
    assert run == want, differs("get_run('abd456')", run, want)


@CASES.case("runs: get_run finds a run by a unique id prefix")
async def _get_run_prefix(store: Store) -> None:
    await _write_ids(store, "abc123", "abd456", "ffff00")
    for prefix, want in (("abc", "abc123"), ("f", "ffff00")):
        got = (await store.get_run(prefix)).id
        assert got == want, differs(f"get_run({prefix!r}).id", got, want)


@CASES.case("runs: get_run prefers an exact id over a longer id it prefixes")
async def _get_run_exact_wins(store: Store) -> None:
    await _write_ids(store, "abc", "abcdef")
    for asked, want in (("abc", "abc"), ("abcd", "abcdef")):
        got = (await store.get_run(asked)).id
        assert got == want, differs(f"get_run({asked!r}).id", got, want)


@CASES.case("runs: get_run of an ambiguous prefix is RunNotFound saying it matches several")
async def _get_run_ambiguous(store: Store) -> None:
    await _write_ids(store, "abc123", "abd456", "ffff00")
    error = await raises(RunNotFound, store.get_run("ab"), "get_run('ab') matching 2 runs")
    message = str(error)
    assert "matches" in message, f"the message should say the prefix matches several: {message}"
    assert "'ab'" in message, f"the message should quote the prefix: {message}"
    assert "more characters" in message, f"the message should say what to do: {message}"


@CASES.case("runs: get_run's ambiguous-prefix message does not understate the matches")
async def _get_run_ambiguous_count(store: Store) -> None:
    await _write_ids(store, "abc123", "abd456", "abe789", "ffff00")
    error = await raises(RunNotFound, store.get_run("ab"), "get_run('ab') matching 3 runs")
    message = str(error)
    assert "matches" in message, f"the message should say the prefix matches several: {message}"
    count = re.search(r"matches (\d+) runs", message)
    # Saying "several" is fine; a number, if given, must be right (three runs match).
    assert count is None or count.group(1) == "3", f"three runs match, the message says: {message}"


@CASES.case("runs: get_run of an unknown id is RunNotFound")
async def _get_run_unknown(store: Store) -> None:
    await _write_ids(store, "abc123", "abd456")
    for run_id in ("nope", "abc1234", "", "zz"):
        error = await raises(RunNotFound, store.get_run(run_id), f"get_run({run_id!r})")
        assert "no run with id" in str(error), f"get_run({run_id!r}) said: {error}"


@CASES.case("runs: get_run on an empty store is RunNotFound, a LookupError")
async def _get_run_empty(store: Store) -> None:
    await raises(RunNotFound, store.get_run("abc"), "get_run('abc') of an empty store")
    await raises(LookupError, store.get_run("abc"), "get_run('abc') of an empty store")


@CASES.case("runs: get_run treats wildcard characters in a prefix literally")
async def _get_run_wildcards(store: Store) -> None:
    await _write_ids(store, "a_1", "ab2", "c%3", "cd4", "e\\5", "ef6")
    for prefix, want in (("a_", "a_1"), ("c%", "c%3"), ("e\\", "e\\5")):
        got = (await store.get_run(prefix)).id
        assert got == want, differs(f"get_run({prefix!r}).id", got, want)
    for prefix in ("_", "%"):
        error = await raises(RunNotFound, store.get_run(prefix), f"get_run({prefix!r})")
        assert "no run with id" in str(error), f"get_run({prefix!r}) said: {error}"


# -- task runs --------------------------------------------------------------------------


async def _write_task_runs(store: Store, run_id: str, seqs: list[int]) -> None:
    shuffled = list(seqs)
    random.Random(7).shuffle(shuffled)
    await store.write(WriteBatch([flow_run(run_id, state=State.RUNNING)], []))
    # Several batches, out of seq order, as the recorder writes them.
    for start in range(0, len(shuffled), 4):
        await store.write(
            WriteBatch([], [task_run(run_id, s) for s in shuffled[start : start + 4]])
        )


async def _seqs(tasks: Awaitable[list[TaskRunRecord]]) -> list[int]:
    return [t.seq for t in await tasks]


@CASES.case("task runs: list_task_runs is in seq order and per run")
async def _list_task_runs_order(store: Store) -> None:
    await _write_task_runs(store, "run1", list(range(10)))
    await _write_task_runs(store, "run2", list(range(3)))
    got = await _seqs(store.list_task_runs("run1"))
    assert got == list(range(10)), differs("seqs of run1", got, list(range(10)))
    got = await _seqs(store.list_task_runs("run2"))
    assert got == [0, 1, 2], differs("seqs of run2", got, [0, 1, 2])
    owners = {t.run_id for t in await store.list_task_runs("run1")}
    assert owners == {"run1"}, differs("run ids of run1's task runs", owners, {"run1"})
    unknown = await store.list_task_runs("unknown")
    assert unknown == [], differs("list_task_runs of an unknown run", unknown, [])


@CASES.case("task runs: list_task_runs pages with offset and limit")
async def _list_task_runs_pages(store: Store) -> None:
    await _write_task_runs(store, "run1", list(range(10)))
    checks: list[tuple[dict[str, Any], list[int]]] = [
        ({"limit": 3}, [0, 1, 2]),
        ({"offset": 3, "limit": 3}, [3, 4, 5]),
        ({"offset": 8}, [8, 9]),
        ({"offset": 8, "limit": 5}, [8, 9]),
        ({"offset": 10}, []),
        ({"offset": 50, "limit": 5}, []),
    ]
    for kwargs, want in checks:
        got = await _seqs(store.list_task_runs("run1", **kwargs))
        assert got == want, differs(f"seqs of list_task_runs('run1', **{kwargs})", got, want)
    pages = [
        await _seqs(store.list_task_runs("run1", offset=offset, limit=4))
        for offset in range(0, 10, 4)
    ]
    want_pages = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert pages == want_pages, differs("pages of 4", pages, want_pages)


@CASES.case("task runs: offset counts rows, not seqs, when seqs have gaps")
async def _list_task_runs_gaps(store: Store) -> None:
    # Gaps are normal in a stored run: a submitted task is recorded only once it
    # starts, and a crashed process leaves whatever was flushed.
    await _write_task_runs(store, "run1", [0, 1, 2, 5, 7, 9])
    pages = [
        await _seqs(store.list_task_runs("run1", offset=offset, limit=2))
        for offset in range(0, 6, 2)
    ]
    # Paging shows every task run once (not 5 twice and 9 never).
    want = [[0, 1], [2, 5], [7, 9]]
    assert pages == want, differs("pages of 2 over seqs 0 1 2 5 7 9", pages, want)
    got = await _seqs(store.list_task_runs("run1", offset=4))
    assert got == [7, 9], differs("list_task_runs(offset=4)", got, [7, 9])
    got = await _seqs(store.list_task_runs("run1", offset=6))
    assert got == [], differs("list_task_runs(offset=6)", got, [])


@CASES.case("task runs: list_task_runs filters by state, paging within the filter")
async def _list_task_runs_state(store: Store) -> None:
    await store.write(WriteBatch([flow_run("run1", state=State.RUNNING), flow_run("run2")], []))
    states = [State.COMPLETED, State.FAILED, State.COMPLETED, State.RUNNING, State.COMPLETED]
    states += [State.FAILED, State.COMPLETED]
    await store.write(WriteBatch([], [task_run("run1", n, state=s) for n, s in enumerate(states)]))
    await store.write(WriteBatch([], [task_run("run2", 0, state=State.FAILED)]))
    checks: list[tuple[dict[str, Any], list[int]]] = [
        ({"state": "Completed"}, [0, 2, 4, 6]),
        ({"state": State.FAILED}, [1, 5]),
        ({"state": "Running"}, [3]),
        ({"state": "Cancelled"}, []),
        ({"state": "Completed", "offset": 1, "limit": 2}, [2, 4]),
        ({"state": "Completed", "offset": 3}, [6]),
    ]
    for kwargs, want in checks:
        got = await _seqs(store.list_task_runs("run1", **kwargs))
        assert got == want, differs(f"seqs of list_task_runs('run1', **{kwargs})", got, want)


@CASES.case("task runs: list_task_runs and count_task_runs filter by tag, paging within it")
async def _task_runs_by_tag(store: Store) -> None:
    await store.write(WriteBatch([flow_run("run1", state=State.RUNNING), flow_run("run2")], []))
    tags: list[list[str] | None] = [["api"], None, ["api", "db"], ["db"], ["api"], []]
    states = [State.COMPLETED, State.COMPLETED, State.FAILED, State.COMPLETED]
    states += [State.COMPLETED, State.COMPLETED]
    await store.write(
        WriteBatch(
            [],
            [
                task_run("run1", n, state=s, tags=t)
                for n, (s, t) in enumerate(zip(states, tags, strict=True))
            ],
        )
    )
    await store.write(WriteBatch([], [task_run("run2", 0, tags=["api"])]))
    checks: list[tuple[dict[str, Any], list[int]]] = [
        ({"tag": "api"}, [0, 2, 4]),
        ({"tag": "db"}, [2, 3]),
        ({"tag": "nope"}, []),
        ({"tag": "api", "offset": 1, "limit": 1}, [2]),
        ({"tag": "api", "state": "Completed"}, [0, 4]),
        ({"tag": "ap"}, []),  # a tag is matched whole, not as a prefix
    ]
    for kwargs, want in checks:
        got = await _seqs(store.list_task_runs("run1", **kwargs))
        assert got == want, differs(f"seqs of list_task_runs('run1', **{kwargs})", got, want)
    counted = await store.count_task_runs("run1", tag="api")
    assert counted == {"Completed": 2, "Failed": 1}, differs("count by tag", counted, "2 + 1")
    assert await store.count_task_runs("run1", tag="nope") == {}


@CASES.case("task runs: count_task_runs counts by state")
async def _count_task_runs(store: Store) -> None:
    await store.write(WriteBatch([flow_run("run1", state=State.RUNNING), flow_run("run2")], []))
    states = [State.COMPLETED] * 3 + [State.FAILED, State.RUNNING, State.RUNNING, State.PENDING]
    await store.write(WriteBatch([], [task_run("run1", n, state=s) for n, s in enumerate(states)]))
    await store.write(WriteBatch([], [task_run("run2", 0, state=State.CANCELLED)]))
    counts = await store.count_task_runs("run1")
    want = {"Completed": 3, "Failed": 1, "Running": 2, "Pending": 1}
    assert counts == want, differs("count_task_runs('run1')", counts, want)
    assert counts[State.COMPLETED] == 3, "State is a str enum: counts[State.COMPLETED] must work"
    counts = await store.count_task_runs("run2")
    assert counts == {"Cancelled": 1}, differs("count_task_runs('run2')", counts, {"Cancelled": 1})
    counts = await store.count_task_runs("unknown")
    assert counts == {}, differs("count_task_runs of an unknown run", counts, {})


@CASES.case("task runs: task_run_edges (RunQueries) gives seq, name, state, edges, by seq")
async def _task_run_edges(store: Store) -> None:
    queries = _queries(store)
    if queries is None:
        return
    await store.write(WriteBatch([flow_run("run1", state=State.RUNNING), flow_run("run2")], []))
    await store.write(
        WriteBatch(
            [],
            [
                task_run("run1", 2, name="c", upstream=[0, 1], state=State.FAILED),
                task_run("run1", 0, name="a", inputs=b"\x91\x01", history=[("Running", 1.0)]),
                task_run("run1", 1, name="b", parent_seq=0, state=State.RUNNING),
                task_run("run2", 0, name="other"),
            ],
        )
    )
    want = [
        (0, "a", "Completed", None, None),
        (1, "b", "Running", 0, None),
        (2, "c", "Failed", None, [0, 1]),
    ]
    got = await queries.task_run_edges("run1")
    assert got == want, differs("task_run_edges('run1')", got, want)
    got = await queries.task_run_edges("run1", after=0, limit=1)
    assert got == want[1:2], differs("task_run_edges('run1', after=0, limit=1)", got, want[1:2])
    got = await queries.task_run_edges("run1", after=2)
    assert got == [], differs("task_run_edges('run1', after=2)", got, [])
    got = await queries.task_run_edges("unknown")
    assert got == [], differs("task_run_edges of an unknown run", got, [])


@CASES.case("task runs: count_task_runs follows upserts")
async def _count_task_runs_upserts(store: Store) -> None:
    await store.write(WriteBatch([flow_run("run1", state=State.RUNNING)], []))
    records = [task_run("run1", n, state=State.RUNNING) for n in range(4)]
    await store.write(WriteBatch([], records))
    counts = await store.count_task_runs("run1")
    assert counts == {"Running": 4}, differs("count_task_runs", counts, {"Running": 4})
    for record in records[:3]:
        record.state = State.COMPLETED
    await store.write(WriteBatch([], records))
    counts = await store.count_task_runs("run1")
    want = {"Completed": 3, "Running": 1}
    assert counts == want, differs("count_task_runs after 3 completed", counts, want)


# -- child runs -------------------------------------------------------------------------


@CASES.case("runs: child_runs lists the subflow runs of a run, oldest first")
async def _child_runs(store: Store) -> None:
    await store.write(
        WriteBatch(
            [
                flow_run("parent", created=1.0),
                flow_run("late-child", created=5.0, parent_run_id="parent", parent_task_seq=2),
                flow_run("early-child", created=3.0, parent_run_id="parent", parent_task_seq=0),
                flow_run("grandchild", created=4.0, parent_run_id="early-child"),
                flow_run("unrelated", created=2.0, parent_run_id="other"),
            ],
            [],
        ),
    )
    children = await store.child_runs("parent")
    got = [r.id for r in children]
    assert got == ["early-child", "late-child"], differs(
        "child_runs('parent')", got, ["early-child", "late-child"]
    )
    want = flow_run("early-child", created=3.0, parent_run_id="parent", parent_task_seq=0)
    assert children[0] == want, differs("the first child run", children[0], want)
    got = await _ids(store.child_runs("early-child"))
    assert got == ["grandchild"], differs("child_runs('early-child')", got, ["grandchild"])
    for run_id in ("grandchild", "unknown"):
        got = await _ids(store.child_runs(run_id))
        assert got == [], differs(f"child_runs({run_id!r})", got, [])


# -- odd text -----------------------------------------------------------------------------


@CASES.case("runs: lookups by text with lone surrogates answer, never raise")
async def _lookups_with_surrogates(store: Store) -> None:
    # A name read from a file name that is not UTF-8 (os.fsdecode) has lone surrogates,
    # which neither SQLite nor PostgreSQL take as query text: a lookup must still
    # answer (nothing matches here), not fail with a UnicodeEncodeError.
    await _write_listing_runs(store)
    odd = "caf\udce9\ud800"
    await raises(RunNotFound, store.get_run(odd), f"get_run({odd!r})")
    lookups: list[tuple[str, Awaitable[object], object]] = [
        ("list_runs(name=...)", store.list_runs(name=odd), []),
        ("list_runs(state=...)", store.list_runs(state=odd), []),
        ("list_task_runs(...)", store.list_task_runs(odd), []),
        ("list_task_runs(tag=...)", store.list_task_runs("r1", tag=odd), []),
        ("count_task_runs(...)", store.count_task_runs(odd), {}),
        ("child_runs(...)", store.child_runs(odd), []),
        ("list_spans(...)", store.list_spans(odd), []),
        ("list_logs(...)", store.list_logs(odd), []),
        ("get_cache(...)", store.get_cache(odd), None),
        ("list_cache(task_name=...)", store.list_cache(task_name=odd), []),
    ]
    queries = _queries(store)
    if queries is not None:
        lookups += [
            ("filter_runs(name=...)", queries.filter_runs(name=odd), []),
            ("filter_runs(state=...)", queries.filter_runs(state=odd), []),
            ("filter_runs(tag=...)", queries.filter_runs(tag=odd), []),
            ("task_run_edges(...)", queries.task_run_edges(odd), []),
        ]
    for what, lookup, want in lookups:
        got = await lookup
        assert got == want, differs(f"{what} with {odd!r}", got, want)


@CASES.case("runs: lookups by text with a NUL answer, never raise")
async def _lookups_with_nul(store: Store) -> None:
    # PostgreSQL's text cannot hold a NUL (a record holding one is written with it
    # escaped); a lookup with one must answer all the same.
    await _write_listing_runs(store)
    odd = "etl\x00nightly"
    got = await _ids(store.list_runs(name=odd))
    assert got == [], differs(f"list_runs(name={odd!r})", got, [])
    seqs = [r.seq for r in await store.list_task_runs("r1", tag=odd)]
    assert seqs == [], differs(f"list_task_runs('r1', tag={odd!r})", seqs, [])
    queries = _queries(store)
    if queries is not None:
        got = await _ids(queries.filter_runs(name=odd))
        assert got == [], differs(f"filter_runs(name={odd!r})", got, [])
