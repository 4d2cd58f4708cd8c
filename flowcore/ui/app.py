"""The web app: the pages of each area, the actions when asked for, the security checks,
the static files, and the store opened for the app's lifetime. :func:`serve` runs it
with uvicorn."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ..store import resolve_store
from ..store.base import Store
from . import actions, assets, flows, run, runs
from .config import UIConfig, check_bind
from .security import COOKIE, security_middleware, session_value, token_matches
from .templating import render

__all__ = ["create_app", "serve"]

STATIC: Final = Path(__file__).parent / "static"


def _store(config: UIConfig) -> Store:
    return resolve_store(None if config.home is None else config.home / "flowcore.db")


async def _login_form(request: Request) -> Response:
    return render(request, "login.html", failed=False)


async def _login(request: Request) -> Response:
    """The token typed in the form: on a match, a cookie (HttpOnly, SameSite=Strict)
    holding an HMAC of this process's secret, never the token."""
    config: UIConfig = request.app.state.config
    body = (await request.body())[:4096].decode("utf-8", "replace")
    given = dict(parse_qsl(body, keep_blank_values=True)).get("token", "")
    if config.token is None:
        return RedirectResponse("/runs", status_code=303)
    if not token_matches(config, given):
        return render(request, "login.html", status_code=401, failed=True)
    response = RedirectResponse("/runs", status_code=303)
    response.set_cookie(COOKIE, session_value(config), httponly=True, samesite="strict")
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return render(
        request, "error.html", status_code=exc.status_code, status=exc.status_code,
        message=exc.detail,
    )  # fmt: skip


def create_app(config: UIConfig, store: Store | None = None) -> Starlette:
    """The app for ``config``, on ``store`` (opened and closed with the app unless given
    open). No action route exists unless ``config.allow_actions``."""
    routes: list[BaseRoute] = [
        *runs.routes(),
        *run.routes(),
        *flows.routes(),
        *assets.routes(),
        Route("/login", _login_form, methods=["GET"]),
        Route("/login", _login, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    if config.allow_actions:
        routes.extend(actions.routes())
    owned = store is None
    the_store = _store(config) if store is None else store

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if owned:
            await the_store.open()
        try:
            yield
        finally:
            if owned:
                await the_store.close()

    app = Starlette(
        routes=routes,
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=security_middleware(config))],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.store = the_store
    app.state.graphs = OrderedDict()
    app.state.graph_jobs = {}  # graphs being computed ahead of their request (ui.run)
    app.state.children = []  # `flowcore resume` processes the resume action started
    return app


def serve(config: UIConfig) -> None:
    """Run the app with uvicorn until interrupted; refuses a bind beyond loopback without
    a token (:func:`~.config.check_bind`)."""
    check_bind(config)
    app = create_app(config)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False)
