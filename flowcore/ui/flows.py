"""Served flows (their parameter schema, servers and recent runs), schedules with their
next fire times and paused state, and shared limits with their holders and waiters."""

from __future__ import annotations

import time
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..views.limits import shared_limits
from ..views.serving import served_flows
from .pages import store_of
from .templating import render

__all__ = ["routes"]

#: Recent runs shown per flow.
RECENT: Final = 5


async def flows_page(request: Request) -> Response:
    store = store_of(request)
    now = time.time()
    flows = await served_flows(store, now=now)
    recent = {f["flow"]: await store.list_runs(name=f["flow"], limit=RECENT) for f in flows}
    limits = await shared_limits(store, now=now)
    return render(
        request,
        "flows.html",
        flows=flows,
        recent=recent,
        limits=limits,
        now=now,
        notice=request.query_params.get("notice", ""),
    )


def routes() -> list[Route]:
    return [Route("/flows", flows_page)]
