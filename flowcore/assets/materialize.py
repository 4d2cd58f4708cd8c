"""Materialising assets: one flow run, a task run per asset (per partition).

``await flowcore.assets.materialize_async(["orders", "report"], graph=graph)`` (or
``flowcore.assets.materialize(...)`` from sync code) runs, as one flow run named
``materialize``, what the selection needs: each asset (partition) is a task run of a
task made from its :attr:`~flowcore.assets.Asset.options` (retries, timeout, limits,
tags), started as soon as its upstreams in the run are done, so independent
branches run concurrently under the usual limits.

Per asset (partition):

1. **Decide.** With ``only_stale`` (the default), it runs when its stored state says
   missing, stale or failed-check, or when an upstream was materialised in this run
   to a new data version; otherwise it is skipped as fresh. An upstream that failed,
   or failed a blocking check, blocks it (recorded as blocked, naming why).
2. **Load** each upstream value through the upstream's I/O (a value materialised
   earlier in this run is passed from memory). A partitioned upstream read through
   a mapping that gives one partition (identity) is passed as the value; one that
   gives several (a daily partition reading 24 hourly ones) as a dict
   ``{upstream partition key: value}`` in partition order.
3. **Call** the function (a sync one in a worker thread); ``Output`` unwrapped.
4. **Store** through its I/O (the default keeps the encoded value on the
   materialisation record, large ones as blobs), compute the data version, run the
   checks, and queue the records (materialisation, check results, and the stale
   marks its downstream gets if the data version changed) with the recorder, with no
   await before the task run completes: they are written in its transaction.

The task run's recorded result is the data version (small), so a resumed run
replays it. Memory: a value is held only while a downstream in the run still needs
it; a backfill of one asset holds none.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import reprlib
import sys
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, Final, cast

import anyio
import msgspec

from .. import ranges
from .._current import current_task_run
from .._sync import run_sync
from ..engine import Engine, current_run, in_engine
from ..engine.runs import run_flow
from ..errors import ConfigurationError, ResultNotSerializable
from ..flow import Flow, flow
from ..records import (
    AssetStateRecord,
    CheckResultRecord,
    MaterializationRecord,
)
from ..serializers import decode_result, encode_result
from ..store import Store, resolve_store
from ..store.files import INLINE_LIMIT, blob_ref
from ..task import Task
from .checks import AssetCheck, CheckResult
from .definition import PARTITION_PARAMETER, Asset
from .errors import (
    AssetDefinitionError,
    AssetValueMissing,
    MaterializationFailed,
    PartitionKeyError,
)
from .graph import AssetGraph
from .io import RESULT_IO, AssetIO, FilesIO, PluginIO
from .mappings import IdentityMapping
from .marks import downstream_marks, sync_definitions
from .output import Output
from .partitions import DynamicPartitions, Partitions
from .versions import data_version

__all__ = [
    "MaterializeResult",
    "add_partitions",
    "backfill",
    "backfill_async",
    "materialize",
    "materialize_async",
    "materialize_flow",
    "sync_definitions",
]

#: The name of the flow run that materialises.
FLOW_NAME: Final = "materialize"
_PREVIEW: Final = 200
#: The (asset, partition) pairs a result lists per outcome; ``counts`` counts them all.
_KEPT: Final = 1000
#: The set {0} as stored: an unpartitioned asset once materialised.
_ONLY_ZERO: Final = ranges.encode([0, 1])


@dataclass(frozen=True, slots=True)
class MaterializeResult:
    """What a materialisation run did, per asset (partition): ``(key, partition)``
    pairs, and for ``failed_checks``, ``blocked`` and ``failed`` the reason (the failed
    check, the upstream and why, the error). Each lists its first 1,000 (a backfill of
    a million partitions stays small); ``counts`` counts them all."""

    run_id: str
    materialized: tuple[tuple[str, str | None], ...] = ()
    skipped: tuple[tuple[str, str | None], ...] = ()
    failed_checks: tuple[tuple[str, str | None, str], ...] = ()
    blocked: tuple[tuple[str, str | None, str], ...] = ()
    failed: tuple[tuple[str, str | None, str], ...] = ()
    data_versions: Mapping[tuple[str, str | None], str] = field(default_factory=dict)
    #: How many of each outcome (a backfill keeps counts, and failures, not every pair).
    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.failed or self.blocked or self.failed_checks)


class _Node(msgspec.Struct, gc=False):
    """One asset (partition) of the run.

    A Struct, not a class with ``__slots__``: made by one C call (no ``__init__`` run per
    node), and untracked by the garbage collector, which no longer walks a run's nodes
    at each collection (it holds no cycle: its definition, value and event never refer
    back to it)."""

    key: str
    partition: str | None
    definition: Asset[Any, Any]
    index: int = 0  # the partition's index, once the node runs
    #: Made only when a downstream node waits (an event costs ~2 µs; most have none).
    done: anyio.Event | None = None
    finished: bool = False
    #: materialized | skipped | failed-check | blocked | failed
    outcome: str = ""
    reason: str = ""
    version: str | None = None  # data version after this run (or stored)
    value: Any = None
    uses: int = 0  # downstream nodes of the run that still need the value
    released: bool = False  # whether it let go of its upstreams' values

    async def wait(self) -> None:
        """Until the node has its outcome."""
        if self.finished:
            return
        if self.done is None:
            self.done = anyio.Event()
        await self.done.wait()

    def finish(self) -> None:
        self.finished = True
        if self.done is not None:
            self.done.set()


def _index(partitions: Partitions | None, partition: str | None) -> int:
    if partitions is None or partition is None:
        return 0
    return partitions.index_of(partition)


def _label(key: str, partition: str | None) -> str:
    return f"asset {key!r}" + ("" if partition is None else f" partition {partition!r}")


# -- the run ------------------------------------------------------------------------------


#: The run a task run of the materialiser belongs to (its argument is the partition key
#: only: what a resumption matches calls on; the node is the run's, by key and partition).
_active: ContextVar[_Run | None] = ContextVar("flowcore_asset_run", default=None)


def _task_for(definition: Asset[Any, Any]) -> Task[Any, Any]:
    """The task that materialises ``definition``: :func:`_materialize` given the definition
    (a partial, not a closure awaiting it: one coroutine frame less per materialisation),
    named as the definition's function for the task run's span."""
    call = functools.partial(_materialize, definition)
    call.__name__ = call.__qualname__ = definition.name  # type: ignore[attr-defined]
    call.__module__ = __name__
    return Task(call, definition.options)


class _Run:
    def __init__(
        self,
        graph: AssetGraph,
        engine: Engine,
        states: Mapping[str, AssetStateRecord],
        only_stale: bool,
    ) -> None:
        self.graph = graph
        self.engine = engine
        self.store = engine.store
        self.recorder = engine.recorder
        self.time = engine.clock.time  # (the engine's clock: a fake one in tests)
        self.states = states
        self.only_stale = only_stale
        self.nodes: dict[tuple[str, str | None], _Node] = {}
        #: The nodes whose task run is running, by (key, partition).
        self.running: dict[tuple[str, str | None], _Node] = {}
        self.sets: dict[tuple[str, str], ranges.RangeSet] = {}
        self.result: dict[str, list[Any]] = {
            k: [] for k in ("materialized", "skipped", "failed_checks", "blocked", "failed")
        }
        self.versions: dict[tuple[str, str | None], str] = {}
        #: Dynamic partitions' indexes, by name then key (those this run touches).
        self.dynamic: dict[str, dict[str, int]] = {}
        #: Outcomes counted; the pairs of each kept up to ``_KEPT`` (memory stays flat).
        self.counts: dict[str, int] = dict.fromkeys(self.result, 0)
        # Nodes started by _start_all and not ended, under its limiter; set when all end.
        self.limiter: anyio.Semaphore | None = None
        self.pending = 0
        self.all_started = False
        self.all_done = anyio.Event()

    def index(self, partitions: Partitions | None, partition: str | None) -> int:
        """The index of ``partition`` (dynamic partitions: as the store numbered it)."""
        if isinstance(partitions, DynamicPartitions) and partition is not None:
            try:
                return self.dynamic[partitions.name][partition]
            except KeyError:
                raise PartitionKeyError(
                    f"{partition!r} is not a partition of {partitions!r}: add it first "
                    f"(flowcore.assets.add_partitions({partitions.name!r}, [...]))"
                ) from None
        return _index(partitions, partition)

    def stored(self, key: str, which: str) -> ranges.RangeSet:
        found = self.sets.get((key, which))
        if found is None:
            state = self.states.get(key)
            found = ranges.RangeSet.from_bytes(getattr(state, which) if state else b"")
            self.sets[(key, which)] = found
        return found

    def has_materialized(self, key: str, index: int) -> bool:
        """Whether the stored state has partition ``index`` of ``key`` materialised; the
        common case (an unpartitioned asset built before) read from the bytes, not
        decoded (~3 µs an asset)."""
        if index == 0 and (key, "materialized") not in self.sets:
            state = self.states.get(key)
            if state is None or not state.materialized:
                return False
            if state.materialized == _ONLY_ZERO:
                return True
        return index in self.stored(key, "materialized")

    def task_of(self, definition: Asset[Any, Any]) -> Task[Any, Any]:
        task: Task[Any, Any] | None = definition.task
        if task is None:  # made once per definition (making a task costs ~40 µs)
            task = definition.task = _task_for(definition)
        return task

    def settle(self, node: _Node) -> None:
        """Count the node's outcome, let go of its upstreams' values, wake its waiters;
        then give its room back (:func:`_start_all`), and say when all nodes have ended."""
        key, partition = node.key, node.partition
        kind = _OUTCOME[node.outcome]
        self.counts[kind] += 1
        kept = self.result[kind]
        if len(kept) < _KEPT:
            if kind == "materialized":
                pair = (key, partition)
                kept.append(pair)
                if node.version is not None:
                    self.versions[pair] = node.version
            elif kind == "skipped":
                kept.append((key, partition))
            else:
                kept.append((key, partition, node.reason))
        if not node.released and self.graph.upstream[key]:
            self.release(node.definition, partition)
        node.finish()
        if self.limiter is not None:
            self.limiter.release()
        self.pending -= 1
        if self.all_started and not self.pending:
            self.all_done.set()

    def summary(self, run_id: str) -> MaterializeResult:
        return MaterializeResult(
            run_id=run_id,
            materialized=tuple(self.result["materialized"]),
            skipped=tuple(self.result["skipped"]),
            failed_checks=tuple(self.result["failed_checks"]),
            blocked=tuple(self.result["blocked"]),
            failed=tuple(self.result["failed"]),
            data_versions=dict(self.versions),
            counts=dict(self.counts),
        )

    async def run_node(self, node: _Node) -> None:
        """Decide, then materialise the node in a task run. Its outcome is in the node,
        and it never raises an ``Exception`` (see :func:`_start_all`): the coroutine the
        run starts per node, so one frame (a wrapper catching for it cost ~0.5 µs a node)."""
        definition, key, partition = node.definition, node.key, node.partition
        try:
            changed_upstream = False
            for up, up_partitions in (
                self.upstream_partitions(definition, partition) if self.graph.upstream[key] else ()
            ):
                for q in up_partitions:
                    up_node = self.nodes.get((up, q))
                    if up_node is None:
                        continue
                    await up_node.wait()
                    if up_node.outcome in ("failed", "blocked"):
                        node.outcome = "blocked"
                        node.reason = (
                            f"upstream {_label(up, q)} {up_node.outcome}: {up_node.reason}"
                        )
                        return
                    if up_node.outcome == "failed-check":
                        node.outcome = "blocked"
                        node.reason = f"upstream {_label(up, q)} failed check {up_node.reason!r}"
                        return
                    if up_node.outcome == "materialized" and up_node.reason == "changed":
                        changed_upstream = True
            if partition is not None:
                node.index = self.index(definition.partitions, partition)
            if self.only_stale and not changed_upstream and self.fresh(key, node.index):
                node.outcome = "skipped"
                return
            task = definition.task
            if task is None:
                task = self.task_of(definition)
            # Found by its task run there (a dict, not a context variable: ~1 µs less).
            self.running[(key, partition)] = node
            try:
                version = await task(partition)
            finally:
                del self.running[(key, partition)]
            node.version = version
            if not node.outcome:  # replayed by a resumption: it completed in the run resumed
                node.outcome, node.reason = "materialized", "replayed"
        except Exception as exc:  # the task run recorded it: here, the run's account
            node.outcome, node.reason = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            self.settle(node)

    def fresh(self, key: str, index: int) -> bool:
        return (
            index in self.stored(key, "materialized")
            and index not in self.stored(key, "stale")
            and index not in self.stored(key, "failed")
        )

    def upstream_partitions(
        self, definition: Asset[Any, Any], partition: str | None
    ) -> list[tuple[str, Sequence[str | None]]]:
        out: list[tuple[str, Sequence[str | None]]] = []
        for up in self.graph.upstream[definition.key]:
            up_parts = self.graph.assets[up].partitions
            if up_parts is None:
                out.append((up, (None,)))
                continue
            mapping = self.graph.mapping(definition.key, up)
            if isinstance(up_parts, DynamicPartitions) and not isinstance(mapping, IdentityMapping):
                # Every key the store has (a dynamic set has no definition to ask).
                known = self.dynamic.get(up_parts.name, {})
                in_order: list[str | None] = [k for k, _ in sorted(known.items(), key=_second)]
                out.append((up, in_order))
                continue
            keys = mapping.upstream_keys(
                definition.partitions, partition, up_parts, until=datetime.now(UTC)
            )
            out.append((up, list(keys or ())))
        return out

    def release(self, definition: Asset[Any, Any], partition: str | None) -> None:
        """This node is done with its upstream values: drop those nobody else needs."""
        if not self.graph.upstream[definition.key]:
            return  # nothing to let go of (and no node to look up)
        node = self.nodes.get((definition.key, partition))
        if node is None or node.released:
            return
        node.released = True
        for up, qs in self.upstream_partitions(definition, partition):
            for q in qs:
                up_node = self.nodes.get((up, q))
                if up_node is not None and up_node.uses:
                    up_node.uses -= 1
                    if not up_node.uses:
                        up_node.value = None

    async def load(self, up: str, partition: str | None) -> tuple[Any, str, int]:
        """The value of ``up`` (partition), its data version and partition index."""
        node = self.nodes.get((up, partition))
        definition = self.graph.assets[up]
        index = self.index(definition.partitions, partition)
        if node is not None and node.outcome == "materialized" and node.version is not None:
            return node.value, node.version, index
        found = (await self.store.latest_materializations(up, [partition]))[0]
        if found is None:
            raise AssetValueMissing(
                f"{_label(up, partition)} has no stored value: it was never materialised; "
                f"materialise it first (flowcore.assets.materialize([{up!r}], ...)), or "
                "select it with its downstream"
            )
        io = definition.io
        if io == RESULT_IO:
            blob = found.value
            if blob is None and found.value_ref is not None and self.store.blobs is not None:
                blob = await self.store.blobs.get(found.value_ref)
            if blob is None:
                raise AssetValueMissing(
                    f"{_label(up, partition)} was materialised by run {found.run_id} with the "
                    f"{found.io!r} I/O, which kept no value in the store; materialise it again"
                )
            value = decode_result(blob, allow_pickle=definition.options.serializer == "pickle")
        else:
            value = await _io_of(io).load(up, partition)
        return value, found.data_version, index

    async def check(
        self, check: AssetCheck, value: Any, partition: str | None
    ) -> CheckResultRecord:
        kwargs = {}
        if PARTITION_PARAMETER in inspect.signature(check.fn).parameters:
            kwargs[PARTITION_PARAMETER] = partition
        definition = self.graph.assets[check.asset_key or ""]
        record = CheckResultRecord(
            key=definition.key,
            check=check.name,
            passed=False,
            at=0.0,
            run_id="",
            seq=0,
            severity=check.severity,
            blocking=check.blocking,
            partition=partition,
            index=self.index(definition.partitions, partition),
        )
        try:
            if inspect.iscoroutinefunction(check.fn):
                outcome = await check.fn(value, **kwargs)
            else:
                outcome = await anyio.to_thread.run_sync(lambda: check.fn(value, **kwargs))
            if isinstance(outcome, CheckResult):
                record.passed, record.metadata = outcome.passed, dict(outcome.metadata)
            elif isinstance(outcome, bool):
                record.passed = outcome
            else:
                record.error = (
                    f"check {check.name!r} returned {type(outcome).__name__}: return a "
                    "flowcore.CheckResult(passed, metadata=...) or a bool"
                )
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {exc}"
        record.at = self.engine.clock.time()
        return record


async def _materialize(definition: Asset[Any, Any], partition: str | None) -> str:
    """The function of an asset's task (:func:`_task_for`): materialise ``definition``
    (``partition``) in the run :data:`_active` holds (steps 2 to 4 of the module docstring).
    Its argument is the partition key only: what a resumption matches calls on.

    Written for the common case, which pays only for what it uses: inputs, checks and a
    downstream are each one test when absent, a constant value is known once worked out
    (:func:`_constant`), and the record is made whole, once, at the end."""
    run = _active.get()
    if run is None:
        raise ConfigurationError(
            f"the task of asset {definition.key!r} materialises it within "
            "flowcore.assets.materialize(); call that instead"
        )
    key = definition.key
    node = run.running.get((key, partition))
    graph = run.graph
    kwargs: dict[str, Any] = {}
    consumed = _NONE
    inputs = graph.inputs[key]
    if inputs:
        consumed = []
        upstream = dict(run.upstream_partitions(definition, partition))
        for param, up in inputs.items():
            up_parts = graph.assets[up].partitions
            qs = upstream[up]
            if up_parts is None or (
                len(qs) == 1 and isinstance(graph.mapping(key, up), IdentityMapping)
            ):
                value, version, up_index = await run.load(up, qs[0])
                consumed.append((up, qs[0], version, up_index))
                kwargs[param] = value
            else:
                values: dict[str | None, Any] = {}
                for q in qs:
                    value, version, up_index = await run.load(up, q)
                    consumed.append((up, q, version, up_index))
                    values[q] = value
                kwargs[param] = values
    if definition.takes_partition_key:
        kwargs[PARTITION_PARAMETER] = partition
    if definition.is_async:
        returned = await definition.fn(**kwargs)
    else:
        returned = await anyio.to_thread.run_sync(functools.partial(definition.fn, **kwargs))
    del kwargs
    value = returned
    io = definition.io
    blob: bytes | None = None
    if isinstance(returned, Output):
        value = returned.value
        version = data_version(value) if returned.data_version is None else returned.data_version
        metadata = {**_metadata(value), **returned.metadata}
    elif (
        io == RESULT_IO
        and definition.options.serializer == "msgpack"
        and (known := _constant(value)) is not None
    ):
        version, preview, blob = known
        metadata = {"preview": preview, "bytes": len(blob)}
    else:
        version = data_version(value)
        metadata = _metadata(value)
    at = run.time()
    index = run.index(definition.partitions, partition) if node is None else node.index
    recorder = run.recorder
    ref: str | None = None
    if io == RESULT_IO:
        if blob is None:
            try:
                blob = encode_result(value, definition.options.serializer, key)
            except ResultNotSerializable as exc:
                raise ResultNotSerializable(
                    f"the value of {_label(key, partition)} cannot be kept by the default "
                    f"I/O: {exc}; return builtins, dataclasses or msgspec Structs, or give "
                    "the asset io=FilesIO(format='bytes') or an I/O of your own"
                ) from None
            metadata.setdefault("bytes", len(blob))
        if len(blob) > INLINE_LIMIT and recorder.blobs is not None:
            ref = blob_ref(blob)
    else:
        await _io_of(io).store(key, partition, value)
    checks: list[CheckResultRecord] = []
    for check in graph.checks[key]:  # a loop: an async comprehension costs ~1 µs
        checks.append(await run.check(check, value, partition))
    # (Asked only with a downstream: the states of others are not read, see above.)
    state_has = bool(graph.downstream[key]) and run.has_materialized(key, index)
    previous: str | None = None
    if state_has and node is not None and node.uses:
        # Whether downstream nodes of this run must run: the version it replaces (the
        # store decides the stale marks itself, in the write transaction).
        if definition.partitions is None:
            previous = run.states[key].data_version
        else:
            before = (await run.store.latest_materializations(key, [partition]))[0]
            previous = None if before is None else before.data_version
    marks = (
        downstream_marks(
            graph,
            key,
            [index, index + 1],
            {"reason": "upstream-changed", "upstream": key, "partition": partition},
        )
        if state_has
        else _NONE
    )
    # From here to the return, no await: the records join the task run's transaction.
    rec = current_task_run.get()
    run_id = rec.run_id if rec is not None else current_run().record.id
    seq = rec.seq if rec is not None else 0
    if ref is not None:
        assert blob is not None
        recorder.add_file(ref, blob)
        blob = None
    recorder.assets.append(
        MaterializationRecord(
            key=key,
            at=at,
            run_id=run_id,
            seq=seq,
            code_version=definition.code_version,
            data_version=version,
            partition=partition,
            index=index,
            consumed=consumed,
            metadata=metadata,
            downstream=marks,
            io=io if type(io) is str else _io_name(io),
            value=blob,
            value_ref=ref,
        )
    )
    failed = ""
    for result in checks:
        result.run_id, result.seq = run_id, seq
        recorder.assets.append(result)
        if not result.passed and result.blocking and not failed:
            failed = result.check
    if node is not None:
        node.outcome = "failed-check" if failed else "materialized"
        node.reason = failed or ("same" if previous == version else "changed")
        node.value = value if node.uses else None
        node.version = version
    if graph.upstream[key]:
        run.release(definition, partition)
    return version


#: The empty ``consumed`` and ``downstream`` of a materialisation that has none, shared:
#: never changed in place (a record is made whole and only read after), and a list
#: less for each to make, track and free costs ~0.2 µs a materialisation.
_NONE: Final[list[Any]] = []

_OUTCOME: Final = {
    "materialized": "materialized",
    "skipped": "skipped",
    "failed-check": "failed_checks",
    "blocked": "blocked",
    "failed": "failed",
    "": "failed",
}


def _second(pair: tuple[str, int]) -> int:
    return pair[1]


def _metadata(value: Any) -> dict[str, Any]:
    """Row count (a sized value) and a short preview, cut as it is made (``reprlib``):
    a million rows are not turned into text to keep 200 characters of it."""
    if value is None or (type(value) in _SCALARS and -_BIG < value < _BIG):
        return {"preview": repr(value)}  # short by construction: no reprlib (~3 µs)
    out: dict[str, Any] = {}
    if isinstance(value, Sequence | Mapping) and not isinstance(value, str | bytes):
        out["rows"] = len(value)
    try:
        text = _repr.repr(value)
    except Exception:
        return out
    out["preview"] = text if len(text) <= _PREVIEW else text[: _PREVIEW - 1] + "…"
    return out


def _constant(value: Any) -> tuple[str, str, bytes] | None:
    """The data version, preview and bytes kept by the default I/O (msgpack) of ``value``
    when it is None, a bool or an int below ``_BIG``, worked out once: an asset that
    writes elsewhere returns the same few again and again (None, True, a row count), and
    hashing, previewing and encoding one costs ~0.7 µs. ``None`` for any other value."""
    kind = type(value)
    if value is not None and kind is not bool and (kind is not int or not -_BIG < value < _BIG):
        return None
    found = _constants.get((kind, value))  # (the type too: True == 1, unlike their bytes)
    if found is None:
        if len(_constants) >= _CONSTANTS_KEPT:
            _constants.clear()
        blob = encode_result(value, "msgpack", "")
        found = _constants[(kind, value)] = (data_version(value), repr(value), blob)
    return found


#: :func:`_constant`'s, by (type, value), up to ``_CONSTANTS_KEPT`` of them.
_constants: dict[tuple[type, Any], tuple[str, str, bytes]] = {}
_CONSTANTS_KEPT: Final = 1024

#: Values whose repr is short (ints and floats below ``_BIG``) and needs no cutting.
_SCALARS: Final = (int, float, bool)
_BIG: Final = 10**15
_repr = reprlib.Repr()
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxdict = 20
_repr.maxstring = _repr.maxother = _PREVIEW


def _io_of(io: AssetIO | str) -> AssetIO:
    if isinstance(io, str):
        if io == "files":
            return FilesIO()
        raise ConfigurationError(
            f"no asset I/O named {io!r}: use 'result' (the default), 'files', or an object "
            "with async store(key, partition, value) and load(key, partition)"
        )
    return io


# -- the API ------------------------------------------------------------------------------


def _selection(selection: object, graph: AssetGraph | None) -> tuple[AssetGraph, list[str]]:
    items: list[object]
    if isinstance(selection, Asset | str):
        items = [selection]
    elif isinstance(selection, Iterable):
        items = list(selection)
    else:
        raise AssetDefinitionError(
            f"select assets with an asset, a key or pattern, or a list of them, got {selection!r}"
        )
    if graph is None:
        given = [i for i in items if isinstance(i, Asset | AssetCheck)]
        if len(given) != len(items):
            raise AssetDefinitionError(
                "selecting assets by key needs their graph: pass graph=AssetGraph([...]) "
                "(or AssetGraph.from_module(module)), or pass the assets themselves"
            )
        graph = AssetGraph(given)
    if set(map(type, items)) == {str}:  # keys or patterns (a thousand keys, often)
        return graph, cast(list[str], items)
    patterns = []
    for item in items:
        if isinstance(item, str):
            patterns.append(item)
        elif isinstance(item, AssetCheck):
            continue  # a check runs with its asset; it selects nothing by itself
        elif isinstance(item, Asset):
            if graph.assets.get(item.key) is not item:
                raise AssetDefinitionError(
                    f"asset {item.key!r} is not in the graph given: add it to the graph"
                )
            patterns.append(item.key)
        else:
            raise AssetDefinitionError(f"{item!r} is not an asset or a key: give either")
    return graph, patterns


def _partition_keys(
    definition: Asset[Any, Any], partition: str | None, span: tuple[str, str] | None
) -> Iterable[str | None]:
    parts = definition.partitions
    if parts is None:
        return (None,)
    if isinstance(parts, DynamicPartitions):
        if partition is None:
            raise PartitionKeyError(
                f"asset {definition.key!r} has dynamic partitions: name the partition "
                "(partition='...')"
            )
        return (parts.check_key(partition),)
    if partition is not None:
        return (parts.check_key(partition),)
    if span is not None:
        return parts.keys_between(*span)
    return parts.keys(until=datetime.now(UTC))


@dataclass
class _Call:
    """What a call of :func:`materialize_async` hands the flow besides its parameters
    (absent when ``flowcore resume`` re-drives the run: the flow rebuilds them)."""

    graph: AssetGraph
    engine: Engine
    run: _Run | None = None


_call: ContextVar[_Call | None] = ContextVar("flowcore_materialize_call", default=None)


def _sources(graph: AssetGraph) -> list[str]:
    """Where the graph's assets and checks are defined, for a resumption to import them:
    module names, or file paths for scripts. Worked out once per graph (a graph does not
    change), not per materialisation."""
    known = _graph_sources.get(graph)
    if known is None:
        known = _graph_sources[graph] = _find_sources(graph)
    return list(known)


#: :func:`_sources` by graph.
_graph_sources: weakref.WeakKeyDictionary[AssetGraph, tuple[str, ...]] = weakref.WeakKeyDictionary()


def _find_sources(graph: AssetGraph) -> tuple[str, ...]:
    found: dict[str, None] = {}
    functions = [a.fn for a in graph.assets.values()]
    functions += [c.fn for checks in graph.checks.values() for c in checks]
    # Per module, not per function: resolving a path costs ~30 µs, a module name once.
    names = dict.fromkeys(getattr(fn, "__module__", None) or "" for fn in functions)
    for module_name in names:
        module = sys.modules.get(module_name)
        file = getattr(module, "__file__", None)
        if module_name == "__main__" or module_name.startswith("_flowcore_user_"):
            if file:
                found[str(Path(file).resolve())] = None
        elif module_name:
            found[module_name] = None
    return tuple(found)


def _import_sources(sources: Sequence[str]) -> AssetGraph:
    modules: list[ModuleType] = []
    for source in sources:
        if source.endswith(".py"):
            name = "_flowcore_assets_" + hashlib.sha256(source.encode()).hexdigest()[:16]
            module = sys.modules.get(name)
            if module is None:
                spec = importlib.util.spec_from_file_location(name, source)
                if spec is None or spec.loader is None:
                    raise ConfigurationError(f"cannot load the assets of {source}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
            modules.append(module)
        else:
            modules.append(importlib.import_module(source))
    return AssetGraph.from_module(*modules)


async def _number_dynamic(
    run: _Run, keys: Sequence[str], partition: str | None, now: float
) -> None:
    """The indexes of the dynamic partitions the run touches: the partition given is
    added to each selected asset's dynamic partitions (keys are added at run time);
    upstreams' keys are read as stored."""
    graph, store = run.graph, run.engine.store
    if not graph.partitioned:
        return  # (most graphs: no partitions, so none dynamic)
    assets = graph.assets  # (the keys are the graph's)
    names: set[str] = set()
    for key in keys:
        parts = assets[key].partitions
        if isinstance(parts, DynamicPartitions) and partition is not None:
            [index] = await store.add_dynamic_partitions(parts.name, [partition], now)
            run.dynamic.setdefault(parts.name, {})[partition] = index
        for up in graph.upstream[key]:
            up_parts = assets[up].partitions
            if isinstance(up_parts, DynamicPartitions):
                names.add(up_parts.name)
    for name in names:
        known = await store.dynamic_partitions(name)
        run.dynamic.setdefault(name, {}).update((k, i) for i, k in enumerate(known))


async def add_partitions(
    partitions: DynamicPartitions | str,
    keys: Sequence[str],
    *,
    store: Store | str | os.PathLike[str] | None = None,
) -> list[int]:
    """Add keys to dynamic partitions (by the definition or its name), kept by the store;
    returns their indexes. ``store``: a store, a path, or ``"memory"`` (default: the
    current engine's, else ``$FLOWCORE_HOME/flowcore.db``)."""
    name = partitions.name if isinstance(partitions, DynamicPartitions) else partitions
    checked = [DynamicPartitions(name).check_key(key) for key in keys]
    if store is None or isinstance(store, str | os.PathLike):
        if store is None:
            return await in_engine(
                lambda engine: engine.store.add_dynamic_partitions(
                    name, checked, engine.clock.time()
                )
            )
        handle = resolve_store(store)
        await handle.open()
        try:
            return await handle.add_dynamic_partitions(name, checked, time.time())
        finally:
            await handle.close()
    return await store.add_dynamic_partitions(name, checked, time.time())


@flow(name=FLOW_NAME)
async def materialize_flow(
    sources: list[str],
    selection: list[str],
    partition: str | None = None,
    first: str | None = None,
    last: str | None = None,
    only_stale: bool = True,
    concurrency: int | None = None,
) -> dict[str, int]:
    """The flow every materialisation and backfill runs as (see the module docstring);
    resumable with ``flowcore resume RUN_ID``: completed partitions are replayed."""
    call = _call.get()
    if call is None:  # a resumption: import the definitions where the run recorded them
        graph = _import_sources(sources)
        engine = current_run().engine
        call = _Call(graph, engine)
    graph, engine = call.graph, call.engine
    known = graph.assets
    # Keys as recorded (no pattern matching: 1,000 patterns by 1,000 keys is a second).
    exact = known.keys() >= set(selection)
    keys = tuple(selection) if exact else graph.select(*selection)
    store = engine.store
    await sync_definitions(graph, store, engine.clock.time())
    # The stored states decide what is fresh (only_stale), and whether a downstream must
    # be marked stale: a run of leaves, rebuilding all, needs none (not read: ~1 µs each).
    wanted = [key for key in keys if only_stale or graph.downstream[key]]
    states = {s.key: s for s in await store.asset_states(wanted)} if wanted else {}
    run = _Run(graph, engine, states, only_stale)
    call.run = run
    _active.set(run)
    await _number_dynamic(run, keys, partition, engine.clock.time())
    span = None if first is None or last is None else (first, last)
    limiter = anyio.Semaphore(concurrency) if concurrency else None
    if len(keys) == 1:
        # One asset (a backfill): partitions streamed, no node kept once done.
        definition = known[keys[0]]
        nodes: Iterable[_Node] = (
            _Node(definition.key, p, definition)
            for p in _partition_keys(definition, partition, span)
        )
        await _start_all(run, nodes, limiter)
        return _ended(run)
    plan: list[_Node] = []
    for key in keys:  # (the keys are the graph's: looked up without a check)
        definition = known[key]
        for p in _partition_keys(definition, partition, span):
            node = _Node(key, p, definition)
            run.nodes[(key, p)] = node
            plan.append(node)
    upstream = graph.upstream
    for node in plan:  # who needs whose value
        if not upstream[node.key]:
            continue
        for up, qs in run.upstream_partitions(node.definition, node.partition):
            for q in qs:
                if (up, q) in run.nodes:
                    run.nodes[(up, q)].uses += 1
    await _start_all(run, plan, limiter)
    return _ended(run)


async def _start_all(run: _Run, nodes: Iterable[_Node], limiter: anyio.Semaphore | None) -> None:
    """Start a coroutine per node (read as they start, under ``limiter``) and wait for all.

    Started on the flow run's spawner (``loop.create_task`` on asyncio), not in a task
    group of their own: an anyio task group costs about 25 µs a child, twice a task run.
    A node never raises an ``Exception`` (its outcome is in the node: :meth:`_Run.run_node`),
    as the spawner needs; each tells the run it ended (:meth:`_Run.settle`)."""
    spawner = current_run().spawner
    run.limiter = limiter
    async with anyio.create_task_group() as tg:
        for node in nodes:
            if limiter is not None:
                await limiter.acquire()
            run.pending += 1
            if spawner is not None:
                spawner.start(run.run_node(node))
            else:
                tg.start_soon(run.run_node, node)
        run.all_started = True
        if run.pending:
            await run.all_done.wait()


def _ended(run: _Run) -> dict[str, int]:
    """The run's counts; :class:`MaterializationFailed` (the flow run ends Failed, and
    ``flowcore resume`` retries what did not complete) when anything failed, failed a
    blocking check or was blocked."""
    counts = run.counts
    bad = counts["failed"] + counts["failed_checks"] + counts["blocked"]
    if bad:
        shown = [*run.result["failed"], *run.result["failed_checks"], *run.result["blocked"]]
        lines = "; ".join(
            f"{_label(key, partition)}: {reason}" for key, partition, reason in shown[:5]
        )
        more = f"; and {bad - 5} more" if bad > 5 else ""
        raise MaterializationFailed(
            f"{counts['failed']} failed, {counts['failed_checks']} failed a blocking check, "
            f"{counts['blocked']} blocked ({counts['materialized']} materialised): {lines}{more}"
        )
    return counts


async def materialize_async(
    selection: object,
    *,
    partition: str | None = None,
    partitions: tuple[str, str] | None = None,
    only_stale: bool = True,
    downstream: bool = False,
    graph: AssetGraph | None = None,
    concurrency: int | None = None,
    engine: Engine | None = None,
) -> MaterializeResult:
    """Materialise the selected assets (and, with ``downstream``, everything downstream)
    as one flow run (module docstring). ``selection``: assets, keys or patterns
    (``"raw/*"``); keys need ``graph``. ``partition``: one partition key of the
    partitioned assets selected; ``partitions=(first, last)``: the keys between, both
    included (default: every partition whose window has ended). ``only_stale``: skip
    fresh ones. ``concurrency``: at most this many task runs at once. ``engine``: the
    engine to run in (default: the current one, or one opened for the call).
    """
    graph, patterns = _selection(selection, graph)
    keys = graph.select(*patterns, downstream=downstream)
    if partition is not None and partitions is not None:
        raise ConfigurationError("give `partition` or `partitions=(first, last)`, not both")
    if partitions is not None and (
        not isinstance(partitions, tuple | list) or len(partitions) != 2
    ):
        raise ConfigurationError(
            f"`partitions` must be a (first, last) pair of partition keys, got {partitions!r}"
        )
    if concurrency is not None and (not isinstance(concurrency, int) or concurrency < 1):
        raise ConfigurationError(f"`concurrency` must be an int >= 1 or None, got {concurrency!r}")
    for key in keys if graph.partitioned else ():  # a bad key is refused before a run
        parts = graph.assets[key].partitions
        if parts is None:
            continue
        if isinstance(parts, DynamicPartitions) and partition is None:
            raise PartitionKeyError(
                f"asset {key!r} has dynamic partitions: name the partition (partition='...')"
            )
        for given in (partition, *(partitions or ())):
            if given is not None:
                try:
                    parts.check_key(given)
                except PartitionKeyError as exc:
                    raise PartitionKeyError(
                        f"asset {key!r}: {exc}; select assets of one kind of partitions per call"
                    ) from None
    first, last = partitions if partitions is not None else (None, None)
    parameters: dict[str, Any] = {
        "sources": _sources(graph),
        "selection": list(keys),
        "partition": partition,
        "first": first,
        "last": last,
        "only_stale": only_stale,
        "concurrency": concurrency,
    }

    async def body(engine: Engine) -> MaterializeResult:
        call = _Call(graph, engine)
        token = _call.set(call)
        holder: list[str] = []
        try:
            await run_flow(
                engine,
                FLOW_NAME,
                _recording_id(materialize_flow, holder),
                (),
                parameters,
                parameters,
                entrypoint=materialize_flow.entrypoint,
                entrypoint_hash=materialize_flow.entrypoint_hash,
            )
        except MaterializationFailed:
            pass  # recorded as the run's error; the result says what, per asset
        finally:
            _call.reset(token)
        run = call.run
        assert run is not None
        return run.summary(holder[0] if holder else "")

    if engine is not None:
        return await body(engine)
    return await in_engine(body)


def _recording_id(fn: Flow[Any, Any], holder: list[str]) -> Callable[..., Coroutine[Any, Any, Any]]:
    async def call(**kwargs: Any) -> Any:
        holder.append(current_run().record.id)
        return await fn.call(**kwargs)

    return call


async def backfill_async(
    asset: Asset[Any, Any] | str,
    start: str,
    end: str,
    *,
    stale_only: bool = False,
    concurrency: int | None = None,
    graph: AssetGraph | None = None,
    engine: Engine | None = None,
) -> MaterializeResult:
    """Materialise the partitions of one asset from ``start`` to ``end`` (both included)
    as one flow run with a task run per partition, ``concurrency`` at a time; resumable
    with ``flowcore resume RUN_ID`` (completed partitions are replayed, never redone).
    Memory stays flat: partitions are read as they start, and none is kept once done."""
    definition = asset if isinstance(asset, Asset) else None
    if definition is None and graph is None:
        raise AssetDefinitionError(
            "backfill by key needs the graph: pass graph=AssetGraph([...]) or the asset itself"
        )
    if definition is not None and definition.partitions is None:
        raise ConfigurationError(
            f"asset {definition.key!r} is not partitioned: materialise it instead"
        )
    return await materialize_async(
        [asset],
        partitions=(start, end),
        only_stale=stale_only,
        graph=graph,
        concurrency=concurrency,
        engine=engine,
    )


def backfill(
    asset: Asset[Any, Any] | str, start: str, end: str, **options: Any
) -> MaterializeResult:
    """:func:`backfill_async` from sync code."""

    async def call() -> MaterializeResult:
        return await backfill_async(asset, start, end, **options)

    result: MaterializeResult = run_sync(
        call, name="flowcore.assets.backfill", instead="await backfill_async(...)"
    )
    return result


def materialize(selection: object, **options: Any) -> MaterializeResult:
    """:func:`materialize_async` from sync code (like ``flowcore.run``)."""

    async def call() -> MaterializeResult:
        return await materialize_async(selection, **options)

    result: MaterializeResult = run_sync(
        call, name="flowcore.assets.materialize", instead="await materialize_async(...)"
    )
    return result


def _io_name(io: object) -> str:
    """What a materialisation records as the I/O that keeps its value: the built-in's name,
    the plugin's name (``PluginIO``), or the class of an I/O object given directly."""
    if isinstance(io, str):
        return io
    if isinstance(io, PluginIO):
        return io.name
    return type(io).__name__
