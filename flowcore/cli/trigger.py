"""``flowcore trigger FLOW``: queue a run for a server that serves the flow."""

from __future__ import annotations

import getpass
import sys
import time
import uuid
from typing import Any

import anyio
import click
import msgspec

from ..errors import ConfigurationError, RunNotFound
from ..ids import HOST
from ..records import FlowRunRecord, Trigger
from ..store import Store, resolve_store
from ..store.crash import mark_crashed_runs
from ..views.format import to_json, visible
from ..views.serving import flow_schema
from ..views.triggers import check_parameter_names, form_value
from .params import params_from_json

__all__ = ["trigger_command", "trigger_parameters"]

#: How often ``--wait`` looks at the store, and marks crashed runs.
_POLL = 0.2
_CRASH_CHECK = 5.0


def _user() -> str:
    try:
        return f"{getpass.getuser()}@{HOST}"
    except Exception:  # no user name (a container without one)
        return HOST


def trigger_parameters(
    pairs: tuple[str, ...], params_json: str | None, schema: dict[str, Any] | None
) -> dict[str, Any]:
    """The parameters of a trigger from ``--param`` and ``--params-json``, their names
    checked against the served flow's ``schema`` when there is one (values are checked
    by the flow when the run starts: a value that does not fit fails the run)."""
    values = params_from_json(params_json) if params_json is not None else {}
    from_json = set(values)
    properties = (schema or {}).get("properties") or {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigurationError(
                f"--param takes NAME=VALUE, got {pair!r}; e.g. --param pages=20"
            )
        if name in values:
            where = "--params-json" if name in from_json else "--param"
            raise ConfigurationError(
                f"parameter {name!r} is given twice (by --param and {where}); give it once"
            )
        values[name] = form_value(raw, properties.get(name))
    check_parameter_names(values, schema)
    return values


async def _wait(store: Store, trigger_id: str) -> FlowRunRecord:
    """The run the trigger became, once it ended (crashed runs are marked as it waits)."""
    run_id: str | None = None
    checked = 0.0
    while True:
        if run_id is None:
            found = await store.get_trigger(trigger_id)
            run_id = found.run_id if found is not None else None
        if run_id is not None:
            now = time.time()
            if now - checked >= _CRASH_CHECK:
                checked = now
                await mark_crashed_runs(store, now=now)
            try:
                run = await store.get_run(run_id)
            except RunNotFound:
                pass
            else:
                if run.state.is_terminal:
                    return run
        await anyio.sleep(_POLL)


@click.command("trigger")
@click.argument("flow_name", metavar="FLOW")
@click.option(
    "--param", "-p", "params", multiple=True, metavar="NAME=VALUE",
    help="A flow parameter (repeatable); converted by the flow's annotation when it runs.",
)  # fmt: skip
@click.option(
    "--params-json", "params_json", metavar="JSON|@FILE",
    help="Flow parameters as a JSON object, or @FILE naming a file holding one.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.option(
    "--wait", is_flag=True,
    help="Wait for the run to end; exit 0 if it completed, 1 otherwise.",
)  # fmt: skip
def trigger_command(
    flow_name: str,
    params: tuple[str, ...],
    params_json: str | None,
    as_json: bool,
    wait: bool,
) -> None:
    """Queue a run of FLOW for a `flowcore serve` process serving it (picked up within a
    second, by exactly one server), and print the trigger's id.

    Parameter names are checked against the flow as its server registered it; values
    are checked when the run starts, as any call's are: parameters that do not fit
    make a run recorded Failed.

    \b
    flowcore trigger ingest --param pages=20
    flowcore trigger report --params-json '{"window": {"days": 7}}' --wait
    """
    trigger_id = uuid.uuid4().hex

    async def main() -> tuple[dict[str, Any], FlowRunRecord | None, bool]:
        store = resolve_store(None)
        try:
            await store.open()
            schema = await flow_schema(store, flow_name)
            values = trigger_parameters(params, params_json, schema)
            await store.enqueue_trigger(
                Trigger(
                    id=trigger_id,
                    flow=flow_name,
                    parameters=msgspec.json.encode(values).decode(),
                    created=time.time(),
                    by=_user(),
                )
            )
            if not as_json:
                click.echo(trigger_id)
                sys.stdout.flush()
                if schema is None:
                    click.echo(
                        visible(
                            f"note: no server has registered flow {flow_name!r}; the trigger "
                            "waits until `flowcore serve` serves it"
                        ),
                        err=True,
                    )
            run = await _wait(store, trigger_id) if wait else None
            return values, run, schema is not None
        finally:
            await store.close()

    values, run, served = anyio.run(main)
    if as_json:
        out: dict[str, Any] = {
            "trigger": trigger_id,
            "flow": flow_name,
            "parameters": values,
            "served": served,
        }
        if run is not None:
            out.update(run_id=run.id, state=str(run.state), error_message=run.error_message)
        click.echo(to_json(out))
    elif run is not None:
        line = f"run {run.id[:8]} {run.state}"
        if run.error_message:
            line += f": {run.error_type}: {run.error_message}"
        click.echo(visible(line))
    if run is not None and run.state.value != "Completed":
        sys.exit(1)
