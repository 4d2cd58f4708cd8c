"""The POST routes that change something: trigger a flow, resume a run, pause or resume
a schedule, materialise an asset or backfill its partitions. They exist only when the
server was started with ``--allow-actions``.

Each checks the form's CSRF token (the security middleware has checked the token and the
origin already), does one thing, logs it on the ``flowcore.ui`` logger, and answers with
a redirect (303) to the page that shows the result. A trigger is queued in the store as
``flowcore trigger`` queues one, ``by`` ``ui``: a server serving the flow runs it, and the
run's ``launched_by`` names the trigger. A resume starts ``flowcore resume RUN_ID`` as a
process of its own: the flow's code runs there, not in the web server.

Materialising follows the resume's model, not the trigger's: ``flowcore serve`` claims
triggers of the flows it serves only, and has no queue of asset materialisations (its
assets are materialised by their automation policies). So the action starts
``flowcore assets materialize -f FILE.py ...`` (or ``backfill``) as a process of its
own, with the files the UI was started with (``flowcore ui -f FILE.py``, or
``$FLOWCORE_ASSETS``); the assets' code runs there, never in the web server, and its run
(named ``materialize``) shows in the runs list. The asset and the partitions are checked
here first against the stored definition, so a bad key is a 400 on the form, not a
process that fails unseen.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
import time
import uuid
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

import anyio
import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..assets.description import StoredDefinition
from ..errors import ConfigurationError, RunNotFound
from ..records import Trigger
from ..views.assets import check_partition_span, closest_keys, stored_definition
from ..views.format import visible
from ..views.serving import find_schedules, flow_schema
from ..views.triggers import check_parameter_names, form_value
from .config import UIConfig
from .pages import store_of
from .security import valid_csrf

__all__ = ["LOGGER", "routes"]

LOGGER: Final = logging.getLogger("flowcore.ui")
#: A form larger than this is refused (parameters are small).
_MAX_FORM: Final = 256 * 1024


async def _form(request: Request) -> dict[str, str]:
    """The url-encoded form, its CSRF token checked (403 without a valid one)."""
    body = await request.body()
    if len(body) > _MAX_FORM:
        raise HTTPException(413, f"form too large ({len(body)} bytes; at most {_MAX_FORM})")
    form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    config: UIConfig = request.app.state.config
    if not valid_csrf(config, form.get("csrf")):
        raise HTTPException(
            403, "missing or stale CSRF token: reload the page and submit the form again"
        )
    return form


def _who(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else "unknown"


async def trigger(request: Request) -> Response:
    form = await _form(request)
    flow = form.get("flow", "").strip()
    if not flow:
        raise HTTPException(400, "flow: give the name of a served flow")
    store = store_of(request)
    schema = await flow_schema(store, flow)
    properties = (schema or {}).get("properties") or {}
    values: dict[str, Any] = {}
    raw_json = form.get("params_json", "").strip()
    if raw_json:
        try:
            decoded = msgspec.json.decode(raw_json)
        except msgspec.DecodeError as exc:
            raise HTTPException(400, f"parameters (JSON): {exc}") from exc
        if not isinstance(decoded, dict):
            raise HTTPException(400, 'parameters (JSON): expected an object, {"name": value}')
        values.update(decoded)
    for key, raw in form.items():
        if key.startswith("p.") and raw != "":
            name = key[2:]
            if name in values:
                raise HTTPException(400, f"parameter {name!r} is given twice; give it once")
            values[name] = form_value(raw, properties.get(name))
    try:
        check_parameter_names(values, schema)
    except ConfigurationError as exc:
        raise HTTPException(400, str(exc)) from exc
    trigger_id = uuid.uuid4().hex
    await store.enqueue_trigger(
        Trigger(
            id=trigger_id,
            flow=flow,
            parameters=msgspec.json.encode(values).decode(),
            created=time.time(),
            by="ui",
        )
    )
    LOGGER.info(
        "ui: triggered flow %s (trigger %s) with %d parameters, from %s",
        visible(flow), trigger_id, len(values), _who(request),
    )  # fmt: skip
    return RedirectResponse("/runs?" + urlencode({"flow": flow}), status_code=303)


async def set_paused(request: Request) -> Response:
    what = request.path_params["what"]
    if what not in ("pause", "resume"):
        raise HTTPException(404, f"no action {what!r} on schedules: pause or resume")
    form = await _form(request)
    name = form.get("schedule", "").strip()
    paused = what == "pause"
    store = store_of(request)
    try:
        match = await find_schedules(store, name)
    except ConfigurationError as exc:
        raise HTTPException(404, str(exc)) from exc
    count = await store.set_paused(match.flow, match.key, paused)
    LOGGER.info(
        "ui: %s schedule %s (%d) from %s",
        "paused" if paused else "resumed", visible(name), count, _who(request),
    )  # fmt: skip
    notice = f"{'paused' if paused else 'resumed'} {name}"
    return RedirectResponse("/flows?" + urlencode({"notice": notice}), status_code=303)


async def resume(request: Request) -> Response:
    await _form(request)
    store = store_of(request)
    try:
        run = await store.get_run(request.path_params["run_id"])
    except RunNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    if not run.state.is_terminal or run.state.value == "Completed":
        raise HTTPException(
            409, f"run {run.id[:8]} is {run.state}: only an ended run that did not complete "
            "can be resumed",
        )  # fmt: skip
    await _start(request, ["resume", run.id])
    LOGGER.info("ui: resuming run %s (%s) from %s", run.id, visible(run.name), _who(request))
    return RedirectResponse("/runs?" + urlencode({"flow": run.name}), status_code=303)


async def _start(request: Request, args: list[str]) -> None:
    """Start ``python -m flowcore ARGS`` as a process of its own (a session of its own:
    it outlives the UI), on the UI's store; those that ended are reaped as another
    starts."""
    config: UIConfig = request.app.state.config
    env = dict(os.environ)
    if config.home is not None:
        env["FLOWCORE_HOME"] = str(config.home)
    start = functools.partial(
        subprocess.Popen,
        [sys.executable, "-m", "flowcore", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    children: list[subprocess.Popen[Any]] = request.app.state.children
    children[:] = [c for c in children if c.poll() is None]
    children.append(await anyio.to_thread.run_sync(start))


async def _asset_form(request: Request) -> tuple[dict[str, str], str, StoredDefinition | None]:
    """The form of an asset action, its CSRF token checked; the asset it names (known to
    the store) and its stored definition. 409 when the UI has no assets' files."""
    form = await _form(request)
    config: UIConfig = request.app.state.config
    if not config.asset_files:
        raise HTTPException(
            409, "this UI was started without the assets' code, which materialising runs: "
            "start it with `flowcore ui --allow-actions -f FILE.py` (or set $FLOWCORE_ASSETS)",
        )  # fmt: skip
    key = form.get("key", "").strip()
    if not key:
        raise HTTPException(400, "key: give the asset to materialise")
    store = store_of(request)
    records = await store.list_asset_defs([key])
    if not records:
        known = [d.key for d in await store.list_asset_defs()]
        close = closest_keys(key, known)
        hint = f"; the closest: {', '.join(close)}" if close else ""
        raise HTTPException(404, f"no asset {key!r} is stored{hint}")
    return form, key, stored_definition(records[0])


def _files(request: Request) -> list[str]:
    config: UIConfig = request.app.state.config
    return [arg for path in config.asset_files for arg in ("-f", str(path))]


async def materialize(request: Request) -> Response:
    form, key, definition = await _asset_form(request)
    partition = form.get("partition", "").strip() or None
    if partition is not None:
        try:
            check_partition_span(definition, partition)
        except ValueError as exc:
            raise HTTPException(400, f"partition: {exc}") from exc
    flags = [
        *(["--downstream"] if form.get("downstream") else []),
        *(["--stale"] if form.get("stale") else []),
        *([f"--partition={partition}"] if partition is not None else []),
    ]
    # Options first, then "--": a key is never read as an option.
    args = ["assets", "materialize", *_files(request), *flags, "--no-progress", "--", key]
    await _start(request, args)
    LOGGER.info(
        "ui: materialising asset %s (%s) from %s: flowcore %s",
        visible(key), " ".join(flags) or "as it is", _who(request), visible(" ".join(args)),
    )  # fmt: skip
    return RedirectResponse("/runs?" + urlencode({"flow": "materialize"}), status_code=303)


async def backfill(request: Request) -> Response:
    form, key, definition = await _asset_form(request)
    first, last = form.get("from", "").strip(), form.get("to", "").strip()
    if not first or not last:
        raise HTTPException(400, "from, to: give the first and the last partition to backfill")
    try:
        check_partition_span(definition, first, last)
    except ValueError as exc:
        raise HTTPException(400, f"from/to: {exc}") from exc
    flags = [
        f"--from={first}",
        f"--to={last}",
        *(["--stale-only"] if form.get("stale_only") else []),
    ]
    args = ["assets", "backfill", *_files(request), *flags, "--no-progress", "--", key]
    await _start(request, args)
    LOGGER.info(
        "ui: backfilling asset %s (%s) from %s: flowcore %s",
        visible(key), " ".join(flags), _who(request), visible(" ".join(args)),
    )  # fmt: skip
    return RedirectResponse("/runs?" + urlencode({"flow": "materialize"}), status_code=303)


def routes() -> list[Route]:
    return [
        Route("/actions/trigger", trigger, methods=["POST"]),
        Route("/actions/schedules/{what:str}", set_paused, methods=["POST"]),
        Route("/actions/runs/{run_id}/resume", resume, methods=["POST"]),
        Route("/actions/assets/materialize", materialize, methods=["POST"]),
        Route("/actions/assets/backfill", backfill, methods=["POST"]),
    ]
