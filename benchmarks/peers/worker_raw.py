"""Raw asyncio: the five workloads with plain coroutine functions, nothing recorded.

Retries are a hand-written loop; the "cache" is a dict in memory. See ``common.py``.
"""

from __future__ import annotations

import asyncio
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

CACHE: dict[int, int] = {}


async def noop(i: int) -> int:
    return i


async def sleeper(i: int) -> int:
    await asyncio.sleep(SLEEP)
    return i


async def flaky(i: int) -> int:
    return ATTEMPTS.check(i)


async def with_retries(i: int, retries: int = FAILURES) -> int:
    for attempt in range(retries + 1):
        try:
            return await flaky(i)
        except RuntimeError:
            if attempt == retries:
                raise
            await asyncio.sleep(0)
    raise AssertionError("unreachable")


async def cached(i: int) -> int:
    if i in CACHE:
        return CACHE[i]
    value = CACHE_RUNS.computed(await noop(i))
    CACHE[i] = value
    return value


async def sequential(n: int) -> None:
    for i in range(n):
        await noop(i)


async def gathered(n: int) -> None:
    await asyncio.gather(*(noop(i) for i in range(n)))


async def sleeping(n: int) -> None:
    await asyncio.gather(*(sleeper(i) for i in range(n)))


async def retrying(n: int) -> None:
    await asyncio.gather(*(with_retries(i) for i in range(n)))


async def cache_hits(n: int) -> None:
    await asyncio.gather(*(cached(i) for i in range(n)))


class Raw(Bench):
    engine = "raw asyncio"
    cache_note = "dict in memory"

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
        return f"Python {sys.version.split()[0]}"

    async def prepare(self, workload: str, n: int) -> None:
        if workload == CACHE_HIT:
            await cache_hits(n)


if __name__ == "__main__":
    sys.exit(main(Raw()))
