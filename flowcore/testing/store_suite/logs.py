"""Cases on run logs: lines kept exactly, read in order, filtered, and paged by id.

``flowcore runs logs --follow`` reads a run's log again and again from the id of the
last line it printed, while the run (in another process, perhaps) writes more: the
ids a store gives must grow with every line written, whichever handle writes it, or
a follower misses lines or shows them twice.
"""

from __future__ import annotations

import itertools

import anyio

from ...records import LogRecord, WriteBatch
from ...states import State
from ...store.base import Store
from .assertions import differs
from .cases import Cases, OpenStore
from .records import flow_run, full_log_line, log_line, task_run

__all__ = ["CASES"]

CASES = Cases()

_R1, _R2, _R9 = ("1" * 32, "2" * 32, "9" * 32)


def _texts(lines: list[LogRecord]) -> list[str]:
    return [line.message for line in lines]


def _check_ids(lines: list[LogRecord], what: str) -> None:
    ids = [line.id for line in lines]
    assert all(isinstance(i, int) for i in ids), differs(f"ids of {what}", ids, "ints")
    growing = all(a < b for a, b in itertools.pairwise(ids))  # type: ignore[operator]
    assert growing, differs(f"ids of {what}", ids, "strictly growing")


@CASES.case("logs: a line keeps every field through a write and a read, and gets an id")
async def _log_round_trip(store: Store) -> None:
    flow_body = log_line(_R1, "", time=1_700_000_000.5, level=0, logger="")
    await store.write(WriteBatch(logs=[full_log_line(), flow_body]))
    got = await store.list_logs(full_log_line().run_id)
    assert len(got) == 1, differs("lines of the run", got, [full_log_line()])
    _check_ids(got, "the line")
    kept = got[0]
    kept.id = None
    assert kept == full_log_line(), differs("the line read back (id aside)", kept, full_log_line())
    got = await store.list_logs(_R1)
    want = [log_line(_R1, "", time=1_700_000_000.5, level=0, logger="")]
    for line in got:
        line.id = None
    assert got == want, differs("a flow body's line (no task) read back", got, want)


@CASES.case("logs: list_logs reads one run's lines in the order they were written")
async def _log_order(store: Store) -> None:
    # Two runs' lines interleaved, over three batches; the times go backwards on purpose:
    # the order is the order of writing, not of the times.
    await store.write(
        WriteBatch(logs=[log_line(_R1, "a1", time=30.0), log_line(_R2, "b1"), log_line(_R1, "a2")])
    )
    await store.write(WriteBatch(logs=[log_line(_R2, "b2", seq=0), log_line(_R1, "a3", seq=1)]))
    await store.write(WriteBatch(logs=[log_line(_R1, f"a{i}", time=1.0) for i in range(4, 40)]))
    got = await store.list_logs(_R1)
    want = [f"a{i}" for i in range(1, 40)]
    assert _texts(got) == want, differs("messages of run 1", _texts(got), want)
    _check_ids(got, "run 1's lines")
    got = await store.list_logs(_R2)
    assert _texts(got) == ["b1", "b2"], differs("messages of run 2", _texts(got), ["b1", "b2"])
    unknown = await store.list_logs(_R9)
    assert unknown == [], differs("lines of a run with none", unknown, [])


@CASES.case("logs: list_logs keeps only the lines of a task run, a task, or a level and above")
async def _log_filters(store: Store) -> None:
    await store.write(
        WriteBatch(
            logs=[
                log_line(_R1, "body info", level=20),
                log_line(_R1, "fetch 0 debug", seq=0, task="fetch", level=10),
                log_line(_R1, "fetch 0 warning", seq=0, task="fetch", level=30),
                log_line(_R1, "parse 1 error", seq=1, task="parse", level=40),
                log_line(_R1, "fetch 2 info", seq=2, task="fetch", level=20),
                log_line(_R1, "body custom", level=35),
                log_line(_R2, "other run fetch", seq=0, task="fetch", level=50),
            ]
        )
    )
    cases: list[tuple[str, dict[str, object], list[str]]] = [
        ("seq=0", {"seq": 0}, ["fetch 0 debug", "fetch 0 warning"]),
        ("task='fetch'", {"task": "fetch"}, ["fetch 0 debug", "fetch 0 warning", "fetch 2 info"]),
        ("task='nothing'", {"task": "nothing"}, []),
        (
            "min_level=30",
            {"min_level": 30},
            ["fetch 0 warning", "parse 1 error", "body custom"],
        ),
        (
            "task='fetch', level 20+",
            {"task": "fetch", "min_level": 20},
            ["fetch 0 warning", "fetch 2 info"],
        ),
        ("seq=2, task='fetch'", {"seq": 2, "task": "fetch"}, ["fetch 2 info"]),
        ("seq=1, task='fetch'", {"seq": 1, "task": "fetch"}, []),
    ]
    for what, filters, want in cases:
        got = await store.list_logs(_R1, **filters)  # type: ignore[arg-type]
        assert _texts(got) == want, differs(f"list_logs(run 1, {what})", _texts(got), want)


@CASES.case("logs: after= and limit= page through a log, and a later read sees only new lines")
async def _log_paging(store: Store) -> None:
    await store.write(WriteBatch(logs=[log_line(_R1, f"m{i}") for i in range(7)]))
    pages, after = [], None
    while True:
        page = await store.list_logs(_R1, after=after, limit=3)
        if not page:
            break
        pages.append(_texts(page))
        after = page[-1].id
    want = [["m0", "m1", "m2"], ["m3", "m4", "m5"], ["m6"]]
    assert pages == want, differs("pages of 3 lines, each after the last id read", pages, want)
    await store.write(WriteBatch(logs=[log_line(_R2, "other"), log_line(_R1, "m7")]))
    got = await store.list_logs(_R1, after=after)
    assert _texts(got) == ["m7"], differs("lines after the last id read", _texts(got), ["m7"])
    filtered = await store.list_logs(_R1, after=after, min_level=30)
    assert filtered == [], differs("lines after the last id, at WARNING and above", filtered, [])


@CASES.case("logs: lines are written in one batch with the runs they belong to")
async def _log_with_runs(store: Store) -> None:
    run = flow_run(_R1, state=State.RUNNING)
    task = task_run(_R1, 0, name="fetch", state=State.RUNNING)
    await store.write(
        WriteBatch([run], [task], logs=[log_line(_R1, "starting", seq=0, task="fetch")])
    )
    run.state = State.COMPLETED
    task.state = State.COMPLETED
    await store.write(WriteBatch([run], [task], logs=[log_line(_R1, "done")]))
    got = await store.list_logs(_R1)
    assert _texts(got) == ["starting", "done"], differs(
        "lines of the run", _texts(got), ["starting", "done"]
    )
    read = await store.get_run(_R1)
    assert read.state is State.COMPLETED, differs("the run's state", read.state, "Completed")


@CASES.handles_case("logs: a follower paging by id sees every line two handles write, once")
async def _log_follow_two_handles(store: Store, open_store: OpenStore) -> None:
    other = await open_store()
    reader = await open_store()
    seen: list[str] = []
    after: int | None = None
    one_reader = anyio.Lock()  # one follower, reading after each write of either handle

    async def follow() -> None:
        nonlocal after
        async with one_reader:
            page = await reader.list_logs(_R1, after=after)
            if page:
                after = page[-1].id
                seen.extend(_texts(page))

    async def write(handle: Store, name: str) -> None:
        for i in range(20):
            await handle.write(WriteBatch(logs=[log_line(_R1, f"{name}{i}.{j}") for j in range(3)]))
            await follow()

    async with anyio.create_task_group() as tg:
        tg.start_soon(write, store, "a")
        tg.start_soon(write, other, "b")
    await follow()
    want = sorted(f"{name}{i}.{j}" for name in "ab" for i in range(20) for j in range(3))
    assert sorted(seen) == want, differs(
        "lines seen by the follower (sorted)", sorted(seen)[:10], want[:10]
    )
    assert len(seen) == len(want), differs("lines seen, counted", len(seen), len(want))
    for name in "ab":  # each handle's lines in the order it wrote them
        mine = [m for m in seen if m.startswith(name)]
        order = [f"{name}{i}.{j}" for i in range(20) for j in range(3)]
        assert mine == order, differs(f"handle {name}'s lines, in order", mine[:6], order[:6])
