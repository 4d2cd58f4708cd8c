"""The ``flowcore`` command: run or resume a flow, list runs, show one run's tree of
task runs and their results, draw a run's trace, list and clear cache entries; serve
flows by their schedules (``serve``), queue runs for servers (``trigger``), list served
flows and pause or resume their schedules (``flows ls``, ``schedules``); serve a web UI
over the store (``ui``); list, explain and materialise assets (``assets``).

Every flowcore error ends the command with ``error: <message>`` on stderr and
exit code 1, never a traceback: its message already says what went wrong and
the fix. Read-only commands open the store, read, and close it; those that show
runs first mark runs whose process died as Crashed, so a killed run does not
show as Running forever. What they read comes from :mod:`flowcore.views`, the
same views the web UI uses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import click

from .assets import assets
from .cache import cache
from .flows import flows
from .limits import limits
from .logs import logs_group
from .run import resume_command, run_command
from .runs import runs
from .schedules import schedules
from .serve import serve_command
from .support import Group
from .trace import trace
from .trigger import trigger_command
from .ui import ui_command

__all__ = ["cli", "main"]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of the run database (overrides $FLOWCORE_HOME; default ~/.flowcore).",
)
@click.version_option(package_name="flowcore")
@click.pass_context
def cli(ctx: click.Context, home: Path | None) -> None:
    """flowcore: run flows and inspect their recorded runs."""
    if home is not None:
        # For this invocation only: restored on exit, which matters when embedded (tests).
        previous = os.environ.get("FLOWCORE_HOME")
        os.environ["FLOWCORE_HOME"] = str(home)

        def restore() -> None:
            if previous is None:
                os.environ.pop("FLOWCORE_HOME", None)
            else:
                os.environ["FLOWCORE_HOME"] = previous

        ctx.call_on_close(restore)


cli.add_command(run_command)
cli.add_command(resume_command)
cli.add_command(runs)
cli.add_command(cache)
cli.add_command(trace)
cli.add_command(limits)
cli.add_command(logs_group)
cli.add_command(serve_command)
cli.add_command(trigger_command)
cli.add_command(flows)
cli.add_command(schedules)
cli.add_command(assets)
cli.add_command(ui_command)


def main() -> NoReturn:
    """The ``flowcore`` console script."""
    cli.main(prog_name="flowcore")
    raise AssertionError("unreachable: click exits")  # pragma: no cover
