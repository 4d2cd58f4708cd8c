"""``flowcore.serve(*flows)`` and ``await flowcore.aserve(*flows)``: run flows by their
schedules and by triggers, until SIGTERM or Ctrl-C.

One engine for the process (opened here, or the one given). The first SIGTERM or
SIGINT stops firing and claiming, lets runs in flight finish for ``grace`` seconds,
then cancels them (recorded Cancelled, committed); a second one cancels them at
once. Then the engine closes (every record flushed) and the call returns: the
``flowcore serve`` command exits 0.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from .. import _validate
from .._sync import run_sync
from ..assets import Asset, AssetGraph
from ..clock import Clock
from ..engine.core import Engine
from ..errors import ConfigurationError
from ..flow import Flow
from ..ids import safe_text
from ..store import Store
from .logs import log, on_stderr
from .server import Server

__all__ = ["Served", "aserve", "asset_graph", "check_options", "serve"]

#: What ``assets=`` takes: a graph, assets (and checks), or modules holding them.
Served = AssetGraph | Sequence[object] | ModuleType | None


def asset_graph(assets: Served) -> AssetGraph | None:
    """``assets=`` as a graph (``None``: no assets); modules give the assets they define."""
    if assets is None or isinstance(assets, AssetGraph):
        return assets
    items: list[object] = [assets] if isinstance(assets, ModuleType | Asset) else list(assets)
    modules = [i for i in items if isinstance(i, ModuleType)]
    rest = [i for i in items if not isinstance(i, ModuleType)]
    found = AssetGraph.from_module(*modules) if modules else None
    if not rest:
        return found
    return AssetGraph([*(found.assets.values() if found else ()), *rest])  # type: ignore[list-item]


def check_options(
    flows: Sequence[object], max_runs: object, grace: object, *, assets: object = None
) -> None:
    """Every problem with ``serve``'s arguments, in one ``ConfigurationError``."""
    problems = []
    if not flows and not assets:
        problems.append(
            "give at least one flow or assets: flowcore.serve(my_flow, ...) or "
            "flowcore.serve(assets=[...])"
        )
    wrong = [f for f in flows if not isinstance(f, Flow)]
    if wrong:
        problems.append(f"serve takes @flowcore.flow functions, got {wrong[0]!r}")
    names = [f.name for f in flows if isinstance(f, Flow)]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        problems.append(
            f"two served flows are named {twice[0]!r}: give one another name "
            "(flow.with_options(name=...))"
        )
    odd = [n for n in names if safe_text(n) is not n]
    if odd:
        # A served flow's name is a key of the store's registry and schedules, which
        # cannot hold lone surrogates (a name made from a file name that is not UTF-8).
        problems.append(
            f"the served flow {odd[0]!r} has a name UTF-8 cannot encode (lone "
            "surrogates): give it another name (flow.with_options(name=...))"
        )
    if problem := _validate.count("max_runs", max_runs, optional=False):
        problems.append(problem)
    if not _validate.is_number(grace) or not 0 <= grace < float("inf"):  # type: ignore[operator]
        problems.append(f"`grace` must be a number of seconds >= 0, got {grace!r}")
    if problems:
        raise ConfigurationError("invalid serve options: " + "; ".join(problems))


async def aserve(
    *flows: Flow[Any, Any],
    assets: Served = None,
    max_runs: int = 100,
    grace: float = 30.0,
    store: Store | str | os.PathLike[str] | None = None,
    engine: Engine | None = None,
    clock: Clock | None = None,
    handle_signals: bool = True,
    on_ready: Callable[[Server], None] | None = None,
) -> None:
    """Serve ``flows`` until SIGTERM, SIGINT or cancellation: fire their schedules' slots
    and the runs triggered for them (``flowcore trigger``), at most ``max_runs`` at once.

    ``store`` (or an open ``engine``, whose store is used): where schedules, triggers
    and runs live (default: SQLite in ``$FLOWCORE_HOME``). ``grace``: seconds runs in
    flight get to finish when stopping, before they are cancelled.
    ``handle_signals``: stop gracefully on SIGTERM and SIGINT (from the main thread,
    where those have their default handlers). ``on_ready(server)`` is called once the
    flows are registered (``server.stop()`` stops it).

    ``assets``: an ``AssetGraph``, assets, or modules defining them: those with an
    ``automation=`` policy are materialised by it (``on_upstream_change``,
    ``on_cron``, ``on_missing``), once across every server sharing the store
    (:mod:`flowcore.serve.reactions`).
    """
    check_options(flows, max_runs, grace, assets=assets)
    graph = asset_graph(assets)
    with on_stderr():
        if engine is None:
            async with Engine(store, clock=clock) as opened:
                await _serve(flows, opened, max_runs, grace, handle_signals, on_ready, graph)
        else:
            await _serve(flows, engine, max_runs, grace, handle_signals, on_ready, graph)


async def _serve(
    flows: Sequence[Flow[Any, Any]],
    engine: Engine,
    max_runs: int,
    grace: float,
    handle_signals: bool,
    on_ready: Callable[[Server], None] | None,
    graph: AssetGraph | None = None,
) -> None:
    server = Server(flows, engine=engine, max_runs=max_runs, grace=grace, assets=graph)
    # The handlers stay while the server drains: a second signal then cancels at once.
    with _signals(server) if handle_signals else _nothing():
        async with server:
            if on_ready is not None:
                on_ready(server)
            await server.serve_forever()


def serve(
    *flows: Flow[Any, Any],
    assets: Served = None,
    max_runs: int = 100,
    grace: float = 30.0,
    store: Store | str | os.PathLike[str] | None = None,
) -> None:
    """:func:`aserve` from synchronous code (a service's ``main``); blocks until SIGTERM
    or Ctrl-C, then returns once runs in flight have finished (or were cancelled after
    ``grace`` seconds)."""
    check_options(flows, max_runs, grace, assets=assets)
    run_sync(
        lambda: aserve(*flows, assets=assets, max_runs=max_runs, grace=grace, store=store),
        name="flowcore.serve",
        instead="await flowcore.aserve(...)",
        cancel_on_sigterm=False,
    )


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _python_default(handler: object, signum: int) -> bool:
    """Whether ``handler`` is what Python (or asyncio's runner) installs for ``signum``:
    replaceable; a program's own handler is left alone."""
    if signum == signal.SIGTERM:
        return handler is signal.SIG_DFL
    if handler is signal.default_int_handler:
        return True
    func = handler.func if isinstance(handler, functools.partial) else handler
    return getattr(func, "__name__", "") == "_on_sigint"  # asyncio.Runner's Ctrl-C


@contextmanager
def _signals(server: Server) -> Iterator[None]:
    """SIGTERM and SIGINT stop ``server`` (the second cancels its runs at once), while
    serving; the handlers there were before are put back after."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # trio: its own Ctrl-C handling stays
        loop = None
    if loop is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def on_signal(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        force = server.stopping

        def stop() -> None:
            if force:
                log.warning("%s again: cancelling the runs in flight now", name)
            else:
                log.info("%s: stopping (again to cancel the runs in flight now)", name)
            server.stop(force=force)

        try:
            loop.call_soon_threadsafe(stop)  # runs between two steps of the loop
        except RuntimeError:  # the loop is closed
            pass

    for signum in (int(signal.SIGTERM), int(signal.SIGINT)):
        current = signal.getsignal(signum)
        if _python_default(current, signum):
            previous[signum] = signal.signal(signum, on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
