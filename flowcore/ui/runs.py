"""The runs list: filters (flow, state, time range, a tag of its tasks), paged on the
server by the store's query (a page of 100,000 runs reads about the runs it skips and
shows), live while runs are in flight.

Live updates poll: the page's script asks for the same URL with ``fragment=1`` every two
seconds while the page shows the newest runs or a run in flight, and swaps in the rows the
server rendered (escaped in one place). Polling rather than server-sent events because the
store has no push: a server pushing events would poll the store itself, once per open tab,
and keep a connection open per tab; a poll is one indexed query and stops with the tab.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..views.runs import find_runs
from .pages import STATES, query_int, query_state, query_text, query_time, store_of
from .templating import render

__all__ = ["routes"]

#: Runs per page, and the most a page may ask for.
PER_PAGE = 50
MAX_PER_PAGE = 500
#: How deep paging goes (a page costs about the runs it skips).
MAX_OFFSET = 100_000


async def runs_page(request: Request) -> Response:
    flow = query_text(request, "flow")
    state = query_state(request)
    since = query_time(request, "since")
    until = query_time(request, "until")
    tag = query_text(request, "tag")
    offset = query_int(request, "offset", 0, 0, MAX_OFFSET)
    limit = query_int(request, "limit", PER_PAGE, 1, MAX_PER_PAGE)
    page = await find_runs(
        store_of(request),
        flow=flow,
        state=state,
        since=since,
        until=until,
        tag=tag,
        offset=offset,
        limit=limit,
    )
    live = offset == 0 or any(not r.state.is_terminal for r in page.runs)
    params = {k: v for k, v in request.query_params.items() if k not in ("offset", "fragment")}
    template = "runs_rows.html" if request.query_params.get("fragment") else "runs.html"
    return render(
        request,
        template,
        page=page,
        live=live,
        states=STATES,
        params=params,
        flow=flow or "",
        state=state or "",
        tag=tag or "",
        since=request.query_params.get("since", ""),
        until=request.query_params.get("until", ""),
    )


async def home(request: Request) -> Response:
    return RedirectResponse("/runs", status_code=307)


def routes() -> list[Route]:
    return [Route("/", home), Route("/runs", runs_page)]
