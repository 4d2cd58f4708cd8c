"""Two processes running flows into one SQLite database at the same time."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import anyio
import pytest

import flowcore
from flowcore import State

GATHERED = 2000
SUBMITTED = 150

CHILD = textwrap.dedent(
    f"""
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
        futures = [noop.submit(i) for i in range({SUBMITTED // 2})]
        futures += [sync_noop.submit(i) for i in range({SUBMITTED - SUBMITTED // 2})]
        gathered = await asyncio.gather(*(noop(i) for i in range({GATHERED})))
        submitted = await flowcore.wait(futures)
        return len(gathered) + len(submitted)


    total = flowcore.run(crowd, sys.argv[1])
    print("total", total)
    """
)


@pytest.mark.slow
def test_two_processes_share_one_database(tmp_path: Path) -> None:
    home = tmp_path / "home"  # does not exist yet: the children race to create it
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "FLOWCORE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    children = [
        subprocess.Popen(
            [sys.executable, str(script), label],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for label in ("a", "b")
    ]
    outputs = []
    for child in children:
        try:
            out, err = child.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
        outputs.append((child.returncode, out, err))
    for returncode, out, err in outputs:
        assert returncode == 0, err
        assert "locked" not in err.lower(), err
        assert out.strip() == f"total {GATHERED + SUBMITTED}", (out, err)

    path = home / "flowcore.db"
    anyio.run(_check_runs, path, {c.pid for c in children}, backend="asyncio")
    per_run = GATHERED + SUBMITTED
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT COUNT(*) FROM task_runs").fetchone() == (2 * per_run,)
        assert conn.execute("SELECT state, COUNT(*) FROM task_runs GROUP BY state").fetchall() == [
            ("Completed", 2 * per_run)
        ]


async def _check_runs(path: Path, pids: set[int]) -> None:
    per_run = GATHERED + SUBMITTED
    async with flowcore.SQLiteStore(path) as store:
        runs = await store.list_runs()
        assert len(runs) == 2
        assert {r.pid for r in runs} == pids
        for run in runs:
            assert run.name == "crowd"
            assert run.state is State.COMPLETED
            assert run.task_count == per_run
            assert await store.count_task_runs(run.id) == {"Completed": per_run}
            task_runs = await store.list_task_runs(run.id)
            assert [t.seq for t in task_runs] == list(range(per_run))
            assert {t.name for t in task_runs} == {"noop", "sync_noop"}
            assert all(t.state is State.COMPLETED for t in task_runs)
