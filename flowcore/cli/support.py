"""What every ``flowcore`` command shares: its error type, its group class, the store it reads.

Every flowcore error ends a command with ``error: <message>`` on stderr and
exit code 1, never a traceback: its message already says what went wrong and
the fix.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click

from ..errors import FlowcoreError
from ..states import State
from ..store import Store, flowcore_home, resolve_store

__all__ = ["STATES", "CliError", "Group", "check_state", "database", "read"]

T = TypeVar("T")
STATES = [s.value for s in State]


class CliError(click.ClickException):
    """An error the user can fix: printed as ``error: <message>``, exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class Group(click.Group):
    """A group that turns every flowcore error raised by its commands into a ``CliError``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlowcoreError as exc:
            raise CliError(str(exc)) from exc


# -- helpers --------------------------------------------------------------------------------


def read(fn: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store of ``$FLOWCORE_HOME``, run ``fn`` on it, and always close it."""

    async def main() -> T:
        store = resolve_store(None)
        try:
            await store.open()
            return await fn(store)
        finally:
            await store.close()

    return anyio.run(main)


def database() -> Path:
    return flowcore_home() / "flowcore.db"


def check_state(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A state name in any case, as stored (``failed`` → ``Failed``)."""
    if value is None:
        return None
    for state in STATES:
        if state.lower() == value.lower():
            return state
    raise click.BadParameter(f"{value!r} is not a run state; the states: {', '.join(STATES)}")
