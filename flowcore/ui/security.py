"""Who may ask what: the token (a bearer header or a login cookie), CSRF tokens on every
POST, the hosts the server answers to, and headers that keep a page from being framed or
running scripts it did not ship.

Secrets are compared with :func:`hmac.compare_digest` (constant time). The CSRF token and
the login cookie are HMACs of the process's random secret, so neither holds the token
itself and both die with the process.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from .config import UIConfig

__all__ = [
    "COOKIE",
    "HEADERS",
    "csrf_token",
    "security_middleware",
    "session_value",
    "token_matches",
    "token_ok",
    "valid_csrf",
]

#: The login cookie's name.
COOKIE: Final = "flowcore_ui"
#: Sent with every response: no inline or foreign scripts (inline styles only for the
#: computed bar positions of the timelines), no framing, no sniffing, no referrer to
#: other sites (URLs hold run ids and filters). ``same-origin`` rather than ``no-referrer``:
#: under ``no-referrer`` browsers send ``Origin: null`` on a form's POST, which the
#: origin check must refuse.
HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
#: Paths served without the token: the login form and the static files (no data).
_OPEN: Final = ("/login", "/static/")


def _mac(config: UIConfig, purpose: bytes) -> str:
    return hmac.new(config.secret, purpose, hashlib.sha256).hexdigest()


def csrf_token(config: UIConfig) -> str:
    """The token every form carries and every POST must return."""
    return _mac(config, b"csrf")


def session_value(config: UIConfig) -> str:
    """The login cookie's value (not the token: an HMAC of this process's secret)."""
    return _mac(config, b"session")


def valid_csrf(config: UIConfig, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), csrf_token(config).encode())


def token_matches(config: UIConfig, given: str) -> bool:
    """Whether ``given`` is the token (constant time)."""
    return config.token is not None and hmac.compare_digest(given.encode(), config.token.encode())


def token_ok(config: UIConfig, request: Request) -> bool:
    """Whether the request carries the token (``Authorization: Bearer``) or the cookie the
    login form set; always true without a token."""
    if config.token is None:
        return True
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer" and token_matches(config, given.strip()):
        return True
    cookie = request.cookies.get(COOKIE)
    return cookie is not None and hmac.compare_digest(
        cookie.encode(), session_value(config).encode()
    )


def _host_ok(config: UIConfig, request: Request) -> bool:
    hosts = config.hosts()
    if hosts is None:
        return True
    host = request.headers.get("host", "")
    name = urlsplit(f"//{host}").hostname or ""
    return name in hosts or f"[{name}]" in hosts


def _origin_ok(request: Request) -> bool:
    """A POST from a page of another site is refused: its ``Origin`` (sent by browsers on
    every POST) must be this server."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


Next = Callable[[Request], Awaitable[Response]]


def security_middleware(config: UIConfig) -> Callable[[Request, Next], Awaitable[Response]]:
    """The checks every request passes, in order: the host, the token, a POST's origin;
    then the security headers on the answer."""

    async def dispatch(request: Request, call_next: Next) -> Response:
        response: Response
        if not _host_ok(config, request):
            response = PlainTextResponse(
                "unknown Host header: this UI answers to its loopback address only "
                "(open http://127.0.0.1:PORT/)",
                status_code=400,
            )
        elif not request.url.path.startswith(_OPEN) and not token_ok(config, request):
            if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                response = RedirectResponse("/login", status_code=303)
            else:
                response = PlainTextResponse(
                    "this UI needs its token: send `Authorization: Bearer TOKEN`, or log in "
                    "at /login",
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        elif request.method == "POST" and not _origin_ok(request):
            response = PlainTextResponse(
                "cross-site POST refused: actions are taken from this UI's own pages",
                status_code=403,
            )
        else:
            response = await call_next(request)
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    return dispatch
