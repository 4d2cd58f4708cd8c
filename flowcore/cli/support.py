"""What every ``flowcore`` command shares: its error type, its group class, the store it
reads, and the types of its numeric options.

Every flowcore error ends a command with ``error: <message>`` on stderr and
exit code 1, never a traceback: its message already says what went wrong and
the fix. A bad option or argument ends it the same way, after the usage line,
with exit code 2. Messages are printed with their control characters made
visible: they quote names and errors a run recorded.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import click

from ..errors import FlowcoreError
from ..states import State
from ..store import Store, flowcore_home, resolve_store
from ..views.format import visible

__all__ = [
    "MAX_COUNT",
    "MAX_DAYS",
    "STATES",
    "CliError",
    "CliUsageError",
    "Count",
    "Days",
    "Group",
    "check_state",
    "database",
    "read",
]

T = TypeVar("T")
STATES = [s.value for s in State]

#: The largest count or position an option takes (``--limit``, ``--offset``,
#: ``--keep-runs``): more than any store holds, and well inside what SQLite binds.
MAX_COUNT = 1_000_000_000
#: The largest age in days ``--older-than`` takes: 100 years, so the moment it names
#: stays a time every store can compare (nanoseconds in 64 bits).
MAX_DAYS = 36_500


class CliError(click.ClickException):
    """An error the user can fix: printed as ``error: <message>``, exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {visible(self.format_message(), multiline=True)}", err=True)


class CliUsageError(click.UsageError):
    """A bad option or argument: the usage line, then ``error: <message>``, exit code 2.

    A bad value is named by its option (``--limit: expected ...``), as the
    ``--param`` errors are, rather than by click's ``Invalid value for '--limit'``.
    """

    @classmethod
    def of(cls, exc: click.UsageError) -> CliUsageError:
        if isinstance(exc, CliUsageError):
            return exc
        message = exc.format_message()
        if isinstance(exc, click.BadParameter) and not isinstance(exc, click.MissingParameter):
            hint = exc.param_hint
            if hint is None and exc.param is not None:
                param = exc.param
                opts = param.opts if isinstance(param, click.Option) else []
                hint = " / ".join(opts) or (param.human_readable_name or "").upper()
            if hint:
                hint = hint if isinstance(hint, str) else " / ".join(hint)
                message = f"{hint}: {exc.message}"
        return cls(message, exc.ctx)

    def show(self, file: Any = None) -> None:
        ctx = self.ctx
        if ctx is not None:
            help_hint = ""
            if ctx.command.get_help_option(ctx) is not None:
                helps = ctx.command.get_help_option_names(ctx)
                help_hint = f"Try '{ctx.command_path} {max(helps, key=len)}' for help.\n"
            click.echo(f"{ctx.get_usage()}\n{help_hint}", err=True)
        click.echo(f"error: {visible(self.format_message(), multiline=True)}", err=True)


class Group(click.Group):
    """A group that turns every flowcore error raised by its commands into a ``CliError``,
    and every usage error into a ``CliUsageError`` (the same ``error:`` line)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:  # the group's own options (``flowcore --bogus``)
            raise CliUsageError.of(exc) from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlowcoreError as exc:
            raise CliError(str(exc)) from exc
        except click.UsageError as exc:  # a subcommand's options and arguments
            raise CliUsageError.of(exc) from exc


# -- numeric options ------------------------------------------------------------------------


class Count(click.types.IntParamType):
    """A whole number from ``low`` to ``high``; anything else (``1e20``, ``-3``, a number
    past what a store can bind) is a usage error naming the option and the range."""

    def __init__(self, low: int, high: int = MAX_COUNT) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value).strip(), 10)
            except ValueError:  # not a whole number, or one of more than 4300 digits
                self._refuse(value, param, ctx)
        if not self.low <= number <= self.high:
            self._refuse(value, param, ctx)
        return number

    def _refuse(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> NoReturn:
        self.fail(
            f"expected a whole number from {self.low} to {self.high}, got {value!r}", param, ctx
        )


class Days(click.types.FloatParamType):
    """A number of days from 0 to :data:`MAX_DAYS` (fractions allowed); ``nan``, ``inf``,
    ``1e400`` and negative numbers are usage errors naming the option and the range.
    ``above_zero``: 0 is refused too (an age a prune keeps: "delete everything" is not
    one)."""

    name = "days"

    def __init__(self, *, above_zero: bool = False) -> None:
        self.above_zero = above_zero

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            days = float(value)
        except (TypeError, ValueError):
            days = math.nan
        low_ok = days > 0 if self.above_zero else days >= 0
        if not (math.isfinite(days) and low_ok and days <= MAX_DAYS):
            expected = (
                f"a number of days above 0 and at most {MAX_DAYS} (0.5 is 12 hours)"
                if self.above_zero
                else f"a number of days from 0 to {MAX_DAYS}"
            )
            self.fail(f"expected {expected}, got {value!r}", param, ctx)
        return days + 0.0  # -0.0 reads as 0


# -- helpers --------------------------------------------------------------------------------

_RELATIVE: Final = re.compile(r"-(\d+)([smhd])")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_at(text: str, now: datetime, option: str) -> float:
    """A time given as ``option``: ISO 8601 text (local time when it names no zone) or
    ``-N`` seconds, minutes, hours or days before ``now``; Unix seconds."""
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        return now.timestamp() - int(relative[1]) * _UNIT_SECONDS[relative[2]]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliUsageError(
            f"{option}: {visible(text)!s} is not a time; give ISO 8601 (2026-01-10T06:00, "
            "2026-01-10 06:00:00+01:00; local time without a zone) or a relative form "
            "(-30s, -10m, -2h, -1d)"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # naive: the reader's local time
    return when.timestamp()


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


class Location:
    """Where the commands read: the store at ``$FLOWCORE_DB_URL`` when it is set (shown
    without its password), else the SQLite file in ``$FLOWCORE_HOME``."""

    def __init__(self) -> None:
        self.url = os.environ.get("FLOWCORE_DB_URL", "").strip()
        self.path = flowcore_home() / "flowcore.db"

    def exists(self) -> bool:
        """Whether there is a store to read (a URL is taken to name one)."""
        return bool(self.url) or self.path.exists()

    def __str__(self) -> str:
        if not self.url:
            return str(self.path)
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        host = parts.netloc.rpartition("@")[2]
        shown: str = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
        return shown


def database() -> Location:
    return Location()


def check_state(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A state name in any case, as stored (``failed`` → ``Failed``)."""
    if value is None:
        return None
    for state in STATES:
        if state.lower() == value.lower():
            return state
    raise click.BadParameter(f"{value!r} is not a run state; the states: {', '.join(STATES)}")
