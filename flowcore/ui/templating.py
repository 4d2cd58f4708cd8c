"""Templates and the filters they show user text with.

Every template is autoescaped (jinja2 escapes ``<``, ``>``, ``&`` and quotes), and user
text also goes through :func:`flowcore.ids.visible` (``|v``): control characters, bidi
overrides and lone surrogates are shown as escapes (``\\u202e``), so a task name cannot
reorder what follows it on the page, and a lone surrogate cannot break the page's UTF-8.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from ..ids import visible
from ..views.format import format_duration, short_value
from .config import UIConfig
from .security import csrf_token

__all__ = ["ENV", "page_json", "render", "show"]

TEMPLATES: Final = Path(__file__).parent / "templates"


def show(value: Any) -> str:
    """Any value as text safe for a page (before escaping): ``None`` as ``-``."""
    if value is None:
        return "-"
    return visible(value if isinstance(value, str) else str(value))


def show_block(value: Any) -> str:
    """Text of several lines (a traceback, a log message): newlines kept."""
    if value is None:
        return ""
    return visible(value if isinstance(value, str) else str(value), multiline=True)


def local_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    moment = datetime.fromtimestamp(ts)
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def percent(fraction: float) -> str:
    return f"{max(0.0, min(fraction, 1.0)) * 100:.3f}%"


def page_json(data: Any) -> str:
    """JSON for the browser: ASCII only (lone surrogates become ``\\udXXX`` escapes, never
    invalid UTF-8) and ``<``, ``>``, ``&`` escaped, so it is inert wherever it lands."""
    text = json.dumps(data, ensure_ascii=True, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


ENV: Final = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(
    v=show,
    vm=show_block,
    dur=format_duration,
    ts=local_time,
    pct=percent,
    short=short_value,
)


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Template ``name`` with what every page needs (the CSRF token, whether actions are
    on, the current path for the navigation)."""
    config: UIConfig = request.app.state.config
    text = ENV.get_template(name).render(
        csrf=csrf_token(config),
        actions=config.allow_actions,
        path=request.url.path,
        request_query=dict(request.query_params),
        **context,
    )
    return HTMLResponse(text, status_code=status_code)
