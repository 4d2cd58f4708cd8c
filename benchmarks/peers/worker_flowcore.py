"""flowcore: the five workloads as a ``@flowcore.flow`` over ``@flowcore.task`` calls.

Run state is persisted to SQLite in a temporary directory (one ``flowcore.Engine``
opened before any clock starts), tracing on (the default). A top-level flow's
records are committed before awaiting it returns, so a timed run includes writing
every task run. See ``common.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

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

import flowcore


@flowcore.task
async def noop(i: int) -> int:
    return i


@flowcore.task
async def sleeper(i: int) -> int:
    await asyncio.sleep(SLEEP)
    return i


@flowcore.task(retries=FAILURES, retry_delay=0)
async def flaky(i: int) -> int:
    return ATTEMPTS.check(i)


@flowcore.task(cache=flowcore.CachePolicy.from_inputs())
async def cached(i: int) -> int:
    return CACHE_RUNS.computed(i)


@flowcore.flow
async def sequential(n: int) -> None:
    for i in range(n):
        await noop(i)


@flowcore.flow
async def gathered(n: int) -> None:
    await asyncio.gather(*(noop(i) for i in range(n)))


@flowcore.flow
async def sleeping(n: int) -> None:
    await asyncio.gather(*(sleeper(i) for i in range(n)))


@flowcore.flow
async def retrying(n: int) -> None:
    await asyncio.gather(*(flaky(i) for i in range(n)))


@flowcore.flow
async def cache_hits(n: int) -> None:
    await asyncio.gather(*(cached(i) for i in range(n)))


class Flowcore(Bench):
    engine = "flowcore"

    def __init__(self) -> None:
        super().__init__()
        self.bodies = {
            SEQUENTIAL: sequential,
            GATHERED: gathered,
            SLEEPING: sleeping,
            RETRY: retrying,
            CACHE_HIT: cache_hits,
        }
        self.stack = contextlib.AsyncExitStack()

    def version(self) -> str:
        return flowcore.__version__

    async def setup(self) -> None:
        await self.stack.enter_async_context(flowcore.Engine(store=self.folder / "flowcore.db"))

    async def teardown(self) -> None:
        await self.stack.aclose()

    async def prepare(self, workload: str, n: int) -> None:
        if workload == CACHE_HIT:
            await cache_hits(n)


if __name__ == "__main__":
    sys.exit(main(Flowcore()))
