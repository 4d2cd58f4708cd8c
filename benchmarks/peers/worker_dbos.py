"""DBOS: the five workloads as an async ``@DBOS.workflow()`` over async ``@DBOS.step()`` calls.

Runs in its own venv (``.venvs/dbos``). The system database is SQLite in a
temporary directory (``system_database_url``; DBOS's default without one is a
SQLite file in the working directory); logging at ERROR (DBOS logs every step
retry as a warning with its traceback). Steps are gathered inside the workflow
with ``asyncio.gather``. Retries: ``@DBOS.step(retries_allowed=True,
max_attempts=3, interval_seconds=0)``.

DBOS has no result cache across workflows. The cache-hit workload is its
closest equivalent, workflow-id replay: N one-step workflows are run once, each
with its own workflow id (``SetWorkflowID``), to fill; the timed run starts them
again with the same ids, and DBOS returns each one's recorded output without
running it. See ``common.py``.
"""

from __future__ import annotations

import asyncio
import sys
from importlib.metadata import version

from common import (
    ATTEMPTS,
    CACHE_HIT,
    CACHE_RUNS,
    FAILURES,
    GATHERED,
    RETRY,
    SEQUENTIAL,
    SLEEP,
    SLEEPING,
    Bench,
    main,
)
from dbos import DBOS, DBOSConfig, SetWorkflowID


@DBOS.step()
async def noop(i: int) -> int:
    return i


@DBOS.step()
async def sleeper(i: int) -> int:
    await asyncio.sleep(SLEEP)
    return i


@DBOS.step(retries_allowed=True, max_attempts=FAILURES + 1, interval_seconds=0)
async def flaky(i: int) -> int:
    return ATTEMPTS.check(i)


@DBOS.step()
async def cached_step(i: int) -> int:
    return CACHE_RUNS.computed(i)


@DBOS.workflow()
async def sequential(n: int) -> None:
    for i in range(n):
        await noop(i)


@DBOS.workflow()
async def gathered(n: int) -> None:
    await asyncio.gather(*(noop(i) for i in range(n)))


@DBOS.workflow()
async def sleeping(n: int) -> None:
    await asyncio.gather(*(sleeper(i) for i in range(n)))


@DBOS.workflow()
async def retrying(n: int) -> None:
    await asyncio.gather(*(flaky(i) for i in range(n)))


@DBOS.workflow()
async def one_step(i: int) -> int:
    return await cached_step(i)


async def replay(i: int) -> int:
    with SetWorkflowID(f"cache-{i}"):
        return await one_step(i)


async def cache_hits(n: int) -> None:
    await asyncio.gather(*(replay(i) for i in range(n)))


class Dbos(Bench):
    engine = "dbos"
    fixed_loop = "asyncio"  # its own default
    cache_note = "workflow-id replay"

    def __init__(self) -> None:
        super().__init__()
        self.bodies = {
            SEQUENTIAL: sequential,
            GATHERED: gathered,
            SLEEPING: sleeping,
            RETRY: retrying,
            CACHE_HIT: cache_hits,
        }

    def version(self) -> str:
        return version("dbos")

    async def setup(self) -> None:
        config: DBOSConfig = {
            "name": "peerbench",
            "system_database_url": f"sqlite:///{self.folder / 'dbos.sqlite'}",
            "log_level": "ERROR",
        }
        DBOS(config=config)
        DBOS.launch()

    async def teardown(self) -> None:
        DBOS.destroy()

    async def prepare(self, workload: str, n: int) -> None:
        if workload == CACHE_HIT:
            await cache_hits(n)


if __name__ == "__main__":
    sys.exit(main(Dbos()))
