"""Backfills: one flow run, a task run per partition, resumable after kill -9; and two
processes materialising at once lose no state update."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from subprocess import CompletedProcess

import anyio
import pytest

import flowcore
from flowcore.assets import DailyPartitions, asset
from flowcore.assets.materialize import backfill_async
from flowcore.ranges import RangeSet

pytestmark = pytest.mark.anyio

SCRIPT = """
import os, signal, sys
import flowcore
from flowcore.assets import DailyPartitions, asset
from flowcore.assets.materialize import backfill_async

LOG = {log!r}

@asset(partitions=DailyPartitions("2026-01-01", tz="UTC"))
def days(partition_key: str) -> str:
    with open(LOG, "a") as f:
        f.write(partition_key + "\\n")
    with open(LOG) as f:
        calls = sum(1 for _ in f)
    if os.environ.get("KILL_AT") and calls >= int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)  # mid-backfill, as a crash would
    return partition_key.upper()

async def main() -> None:
    # Strict durability: each completion is committed before the next call starts, so
    # the kill finds committed partitions (batched, it might find none yet).
    async with flowcore.Engine(durability="strict") as engine:
        result = await backfill_async(days, sys.argv[1], sys.argv[2], concurrency=4, engine=engine)
    print(result.counts["materialized"])

if __name__ == "__main__":
    import anyio
    anyio.run(main)
"""


async def _run(script: Path, *args: str, env: dict[str, str]) -> CompletedProcess[bytes]:
    with anyio.fail_after(120):
        return await anyio.run_process([sys.executable, str(script), *args], env=env, check=False)


async def test_a_backfill_killed_midway_resumes_without_redoing_a_completed_partition(
    tmp_path: Path, flowcore_home: Path
) -> None:
    log = tmp_path / "calls.log"
    script = tmp_path / "backfill_days.py"
    script.write_text(textwrap.dedent(SCRIPT.format(log=str(log))))
    env = {**os.environ, "FLOWCORE_HOME": str(flowcore_home), "KILL_AT": "40"}
    killed = await _run(script, "2026-01-01", "2026-04-10", env=env)  # 100 days
    assert killed.returncode == -9, killed.stderr
    async with flowcore.Engine() as engine:
        [run] = await engine.store.list_runs(name="materialize")
        before = {m.partition for m in await engine.store.asset_history("days", limit=1000)}
        assert 0 < len(before) < 100  # some partitions committed, not all
        await flowcore.resume_async(run.id)
        history = await engine.store.asset_history("days", limit=1000)
        [state] = await engine.store.asset_states(["days"])
    partitions = [m.partition for m in history]
    assert len(partitions) == 100 and len(set(partitions)) == 100  # each once, none twice
    assert RangeSet.from_bytes(state.materialized).ranges() == ((0, 100),)
    calls = log.read_text().split()
    # A partition committed before the kill was replayed, never called again.
    assert all(calls.count(p) == 1 for p in before if p is not None)


async def test_a_backfill_in_process_counts_and_keeps_memory_flat() -> None:
    @asset(partitions=DailyPartitions("2026-01-01", tz="UTC"))
    def day(partition_key: str) -> int:
        return len(partition_key)

    async with flowcore.Engine(store="memory") as engine:
        result = await backfill_async(day, "2026-01-01", "2026-12-31", concurrency=8, engine=engine)
        assert result.counts["materialized"] == 365
        again = await backfill_async(
            day, "2026-01-01", "2026-12-31", stale_only=True, engine=engine
        )
        assert again.counts["skipped"] == 365 and again.counts["materialized"] == 0
        [state] = await engine.store.asset_states(["day"])
    assert RangeSet.from_bytes(state.materialized).ranges() == ((0, 365),)


SCRIPT_CONCURRENT = """
import sys
import flowcore
from flowcore.assets import StaticPartitions, asset
from flowcore.assets.materialize import materialize

KEYS = [f"k{i:03d}" for i in range(200)]

@asset(partitions=StaticPartitions(KEYS))
def shard(partition_key: str) -> str:
    return partition_key

if __name__ == "__main__":
    half = int(sys.argv[1])
    mine = KEYS[half::2]  # interleaved: every range-set update touches the other's ranges
    for key in mine:
        materialize([shard], partition=key, only_stale=False)
    print("done")
"""


async def test_two_processes_materialising_at_once_lose_no_state_update(
    tmp_path: Path, flowcore_home: Path
) -> None:
    script = tmp_path / "shards.py"
    script.write_text(textwrap.dedent(SCRIPT_CONCURRENT))
    env = {**os.environ, "FLOWCORE_HOME": str(flowcore_home)}
    done: list[CompletedProcess[bytes]] = []

    async def one(half: int) -> None:
        done.append(await _run(script, str(half), env=env))

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, 0)
        tg.start_soon(one, 1)
    assert [p.returncode for p in done] == [0, 0], [p.stderr for p in done]
    async with flowcore.Engine() as engine:
        [state] = await engine.store.asset_states(["shard"])
        assert state.materializations == 200
    assert RangeSet.from_bytes(state.materialized).ranges() == ((0, 200),)
