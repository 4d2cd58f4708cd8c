"""``flowcore serve FILE.py[:flow] ...``: serve flows by their schedules and triggers, and
the assets the files define by their automation policies."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import click

from ..assets import Asset
from ..entrypoints import flows_in, load_module, split_target
from ..errors import FlowLoadError
from ..flow import Flow
from ..serve import serve
from ..serve.server import RETENTION_VARIABLE
from .support import Count, Days

__all__ = ["assets_in", "serve_command", "served_in"]


def _has_assets(module: ModuleType) -> bool:
    return any(isinstance(v, Asset) for v in vars(module).values())


def assets_in(targets: tuple[str, ...]) -> list[ModuleType]:
    """The modules of ``FILE.py`` targets (not ``FILE.py:flow``) that define assets: their
    assets are served with the flows (each by its automation policy)."""
    return _served(targets)[1]


def served_in(targets: tuple[str, ...]) -> list[Flow[Any, Any]]:
    """The flows ``targets`` name: ``FILE.py:flow`` that flow; ``FILE.py`` every flow of
    the file that has a schedule, or every flow when none has (none for a file that
    defines assets only)."""
    return _served(targets)[0]


def _served(targets: tuple[str, ...]) -> tuple[list[Flow[Any, Any]], list[ModuleType]]:
    """The flows and the asset modules of ``targets``, each file imported once."""
    found: dict[str, Flow[Any, Any]] = {}
    modules: dict[str, ModuleType] = {}
    loaded: dict[str, ModuleType] = {}
    for target in targets:
        path, name = split_target(target)
        module = loaded.get(str(path))
        if module is None:
            module = loaded[str(path)] = load_module(path)
        if name is None and _has_assets(module):
            modules[module.__name__] = module
        flows = flows_in(module)
        available = ", ".join(flows) or "none"
        if name is not None:
            value = vars(module).get(name)
            if not isinstance(value, Flow):
                raise FlowLoadError(
                    f"{path} has no flow named {name!r}; the flows it defines: {available}"
                )
            chosen = [value]
        else:
            if not flows and _has_assets(module):
                continue  # its assets are served (assets_in)
            if not flows:
                raise FlowLoadError(
                    f"{path} defines no flow; decorate an `async def` in it with "
                    "@flowcore.flow(schedule=flowcore.cron(...))"
                )
            scheduled = [f for f in flows.values() if f.schedules]
            chosen = scheduled or list(flows.values())
        for flow in chosen:
            other = found.get(flow.name)
            if other is not None and other is not flow:
                raise FlowLoadError(
                    f"two flows named {flow.name!r} are given; serve one of them, or rename "
                    "one (@flowcore.flow(name=...))"
                )
            found[flow.name] = flow
    return list(found.values()), list(modules.values())


@click.command("serve")
@click.argument("targets", nargs=-1, required=True, metavar="FILE.py[:FLOW] ...")
@click.option(
    "--max-runs", type=Count(1, 1_000_000), default=100, show_default=True, metavar="N",
    help="At most N runs at once in this process; due slots and triggers beyond wait.",
)  # fmt: skip
@click.option(
    "--grace", type=click.FloatRange(0, 86_400), default=30.0, show_default=True,
    metavar="SECONDS",
    help="On SIGTERM or Ctrl-C: how long runs in flight may finish before they are cancelled.",
)  # fmt: skip
@click.option(
    "--run-retention-days", type=Days(above_zero=True), metavar="DAYS",
    help=f"Prune the runs that ended more than DAYS days ago, at start and then hourly "
    f"(default: ${RETENTION_VARIABLE}, else keep them).",
)  # fmt: skip
def serve_command(
    targets: tuple[str, ...], max_runs: int, grace: float, run_retention_days: float | None
) -> None:
    """Serve flows: fire their schedules' slots and the runs triggered for them
    (`flowcore trigger`), until SIGTERM or Ctrl-C.

    FILE.py:FLOW serves that flow; FILE.py every flow in it that has a schedule (every
    flow when none has), and the assets it defines: those with an automation policy
    (on_upstream_change, on_cron, on_missing) are materialised by it, once across every
    server sharing the store. Any number of `flowcore serve` processes may share a store:
    each slot and trigger runs once. On SIGTERM or Ctrl-C, runs in flight get --grace
    seconds to finish, then are cancelled (recorded Cancelled); a second Ctrl-C cancels
    them at once. Exits 0.

    With --run-retention-days (or FLOWCORE_RUN_RETENTION_DAYS) it also prunes old runs,
    as `flowcore runs prune --older-than DAYS` does, when it starts and every hour.

    \b
    flowcore serve examples/scheduled.py
    flowcore serve flows.py:ingest flows.py:report --max-runs 10 --grace 60
    flowcore serve flows.py --run-retention-days 30
    """
    flows, modules = _served(targets)
    with _retention(run_retention_days):
        serve(*flows, assets=modules or None, max_runs=max_runs, grace=grace)


@contextmanager
def _retention(days: float | None) -> Iterator[None]:
    """``$FLOWCORE_RUN_RETENTION_DAYS`` set to ``days`` while serving (the server reads it),
    as it was afterwards (which matters when the command runs embedded, in tests)."""
    if days is None:
        yield
        return
    previous = os.environ.get(RETENTION_VARIABLE)
    os.environ[RETENTION_VARIABLE] = repr(days)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(RETENTION_VARIABLE, None)
        else:
            os.environ[RETENTION_VARIABLE] = previous
