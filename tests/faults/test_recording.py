"""Recording under adversity: a full disk, a database deleted under a running engine, a
read-only store; and what flowcore creates is private to its user.

Whatever goes wrong, the caller hears of it as a :class:`flowcore.StoreError` at once
(never a hang, never a silent loss), the engine goes on once the store can be
written again, and what the store finally records agrees with what the caller saw:
a run whose end could not be written is recorded Failed with that error, never
Completed.

The disk is filled with ``RLIMIT_FSIZE`` (a write past the limit fails with EFBIG,
as on a full disk) in a process of its own; a read-only store needs a user whom
permissions bind, so as root that process drops to ``nobody`` first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import flowcore
from flowcore import State

pytestmark = pytest.mark.anyio


@flowcore.task
async def step(i: int) -> int:
    return i


@flowcore.flow
async def work(n: int) -> int:
    return sum([await step(i) for i in range(n)])


def _run_child(script: str, *args: str, cwd: Path) -> dict[str, Any]:
    """Run ``script`` in a Python process of its own; returns the JSON it prints last."""
    path = cwd / "child.py"
    path.write_text(textwrap.dedent(script))
    done = subprocess.run(
        [sys.executable, str(path), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard: a strict run used to wait forever on a full disk
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def _runs(path: Path) -> dict[str, flowcore.FlowRunRecord]:
    async with flowcore.SQLiteStore(path) as store:
        return {run.id: run for run in await store.list_runs()}


# -- a full disk ----------------------------------------------------------------------------

DISK_FULL = """
    import asyncio, json, resource, signal, sys
    import flowcore

    # A write past RLIMIT_FSIZE fails with EFBIG, as on a full disk (instead of the
    # signal that would kill the process).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    @flowcore.task
    async def step(i: int) -> int:
        return i

    @flowcore.flow
    async def work(n: int) -> int:
        return sum([await step(i) for i in range(n)])

    async def main(path: str, durability: str) -> None:
        out = {}
        async with flowcore.Engine(store=path, durability=durability) as engine:
            out["before"] = await work(3)
            out["before_run"] = engine.last_run.id
            resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))  # the disk is full
            try:
                out["full"] = await work(300)
            except flowcore.StoreError as exc:
                out["full"] = type(exc).__name__
                out["full_message"] = str(exc)
            out["full_run"] = engine.last_run.id
            out["full_state"] = engine.last_run.state.value
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # room again
            out["after"] = await work(2)
            out["after_run"] = engine.last_run.id
        print(json.dumps(out))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["batched", "strict"])
async def test_a_full_disk_fails_the_run_at_once_and_the_store_agrees(
    durability: str, tmp_path: Path
) -> None:
    # Regression (strict): a failed flush never woke the task waiting for its commit,
    # so a strict run hung forever on a full disk. And (both): a run whose end could
    # not be written was recorded Completed once the disk had room, though its caller
    # had been told it failed.
    path = tmp_path / "flowcore.db"
    out = _run_child(DISK_FULL, str(path), durability, cwd=tmp_path)
    assert out["before"] == 3 and out["after"] == 1  # the engine went on
    assert out["full"] == "StoreUnavailable"
    assert str(path) in out["full_message"] and "free space" in out["full_message"]
    assert out["full_state"] == "Failed"
    runs = await _runs(path)
    assert set(runs) == {out["before_run"], out["full_run"], out["after_run"]}
    assert runs[out["before_run"]].state is State.COMPLETED
    assert runs[out["after_run"]].state is State.COMPLETED
    full = runs[out["full_run"]]
    assert full.state is State.FAILED  # what its caller saw, never Completed
    assert full.error_type == "flowcore.StoreUnavailable"
    assert full.error_message is not None and "disk I/O error" in full.error_message


# -- the database deleted or replaced under a running engine -----------------------------------


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_database_deleted_under_the_engine_is_an_error_naming_it(
    how: str, tmp_path: Path
) -> None:
    # Regression: SQLite went on writing to the unlinked file: 30 more flows
    # "succeeded", and every record of them was lost without a word.
    path = tmp_path / "flowcore.db"
    errors: list[str] = []
    first = ""

    async def run_then_close() -> None:
        nonlocal first
        async with flowcore.Engine(store=path) as engine:
            assert await work(3) == 3
            assert engine.last_run is not None
            first = engine.last_run.id
            if how == "deleted":
                for suffix in ("", "-wal", "-shm"):
                    os.unlink(f"{path}{suffix}")
            else:
                other = tmp_path / "other.db"
                async with flowcore.SQLiteStore(other):
                    pass
                os.replace(other, path)
            for _ in range(30):
                with pytest.raises(flowcore.StoreUnavailable) as info:
                    await work(3)
                errors.append(str(info.value))
            assert engine.recorder.pending > 0  # kept, not dropped

    # Closing the engine cannot write them either, and says so.
    with pytest.raises(flowcore.StoreUnavailable, match=re.escape(f"{path} was {how}")):
        await run_then_close()
    assert len(errors) == 30
    assert f"the flowcore database {path} was {how}" in errors[0]
    assert "while this engine had it open" in errors[0] and "restart the engine" in errors[0]
    # What is there now (a new database, or the other one, which may have taken in the
    # old write-ahead log) holds none of the 30 runs that were refused.
    assert set(await _runs(path)) <= {first}


# -- a read-only store ------------------------------------------------------------------------

READ_ONLY = """
    import asyncio, json, os, sys, tempfile
    from pathlib import Path
    import flowcore

    @flowcore.task
    async def big(n: int) -> bytes:
        return b"x" * n  # over 16 KiB: a result file

    @flowcore.flow
    async def work(n: int) -> int:
        return len(await big(n))

    async def round_trip(home: Path) -> None:
        async with flowcore.Engine(store=home / "flowcore.db"):
            await work(20_000)
        async with flowcore.SQLiteStore(home / "flowcore.db") as store:
            for run in await store.list_runs():
                await store.list_task_runs(run.id)

    async def main(home: Path) -> None:
        out = {}
        async with flowcore.Engine(store=home / "flowcore.db") as engine:
            out["before"] = await work(20_000)
            os.chmod(home / "results", 0o500)  # no new result file can be written
            try:
                out["read_only"] = await work(30_000)
            except flowcore.StoreError as exc:
                out["read_only"] = type(exc).__name__
                out["read_only_message"] = str(exc)
            out["read_only_run"] = engine.last_run.id
            os.chmod(home / "results", 0o700)
            out["after"] = await work(10)
        os.chmod(home / "flowcore.db", 0o400)  # the database itself read-only
        try:
            async with flowcore.Engine(store=home / "flowcore.db"):
                out["open"] = "opened"
        except flowcore.StoreError as exc:
            out["open"] = type(exc).__name__
            out["open_message"] = str(exc)
        os.chmod(home / "flowcore.db", 0o600)
        print(json.dumps(out))

    home = Path(sys.argv[1])
    if os.geteuid() == 0:
        # Permissions do not bind root: go on as nobody, once every module flowcore
        # needs is loaded (by a round trip as root), since the interpreter's own files
        # may not be readable by nobody.
        with tempfile.TemporaryDirectory() as scratch:
            asyncio.run(round_trip(Path(scratch)))
        os.setgid(65534)
        os.setuid(65534)
    asyncio.run(main(home))
"""


@pytest.fixture
def home_for_anyone(tmp_path: Path) -> Iterator[Path]:
    """A folder for the read-only store's process: owned by ``nobody`` when the tests run
    as root (the child then runs as nobody, who cannot reach into pytest's folders)."""
    if os.geteuid() != 0:
        yield tmp_path / "home"
        return
    parent = Path(tempfile.mkdtemp(prefix="flowcore-read-only-"))
    try:
        home = parent / "home"
        home.mkdir()
        for path in (parent, home):
            os.chown(path, 65534, 65534)
        yield home
    finally:
        shutil.rmtree(parent)


@pytest.mark.slow
async def test_a_read_only_store_is_an_error_and_the_store_agrees(
    home_for_anyone: Path, tmp_path: Path
) -> None:
    home = home_for_anyone
    out = _run_child(READ_ONLY, str(home), cwd=tmp_path)
    assert out["before"] == 20_000 and out["after"] == 10
    # A result file that cannot be written fails the run, clearly, and the engine goes on.
    assert out["read_only"] == "StoreUnavailable"
    assert "cannot write result files" in out["read_only_message"]
    assert str(home / "results") in out["read_only_message"]
    # A database that cannot be written is refused when opened, naming the fix.
    assert out["open"] == "StoreUnavailable"
    assert "is not readable and writable by this user" in out["open_message"]
    runs = await _runs(home / "flowcore.db")
    read_only = runs.pop(out["read_only_run"])
    assert read_only.state is State.FAILED  # what its caller saw, never Completed
    assert read_only.error_type == "flowcore.StoreUnavailable"
    assert [run.state for run in runs.values()] == [State.COMPLETED] * 2


# -- what flowcore creates is private to its user -------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The commonest umask, under which files are created 0644 unless asked otherwise."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask_022")
async def test_the_home_database_and_result_files_are_private(flowcore_home: Path) -> None:
    # Regression: the home folder was created 0755 and the database 0644, though
    # parameters and inputs are kept in plain text.
    @flowcore.task
    async def big() -> bytes:
        return b"x" * 20_000  # a result file

    @flowcore.flow
    async def makes_files(secret: str) -> int:
        return len(await big())

    async with flowcore.Engine():
        assert await makes_files("hunter2") == 20_000
        database = flowcore_home / "flowcore.db"
        created = {
            "home": flowcore_home,
            "database": database,
            "wal": Path(f"{database}-wal"),
            "shm": Path(f"{database}-shm"),
            "results": flowcore_home / "results",
        }
        modes = {name: _mode(path) for name, path in created.items()}
        (folder,) = (flowcore_home / "results").iterdir()
        (blob,) = folder.iterdir()
        modes["result folder"], modes["result file"] = _mode(folder), _mode(blob)
    assert modes == {
        "home": 0o700,
        "database": 0o600,
        "wal": 0o600,
        "shm": 0o600,
        "results": 0o700,
        "result folder": 0o700,
        "result file": 0o600,
    }


@pytest.mark.usefixtures("umask_022")
async def test_a_folder_the_user_made_keeps_its_mode(flowcore_home: Path) -> None:
    os.mkdir(flowcore_home)
    os.chmod(flowcore_home, 0o750)
    async with flowcore.Engine():
        assert await work(2) == 1
    assert _mode(flowcore_home) == 0o750
    assert _mode(flowcore_home / "flowcore.db") == 0o600  # what flowcore made is private


@pytest.mark.usefixtures("umask_022")
async def test_a_database_that_exists_keeps_its_mode(flowcore_home: Path) -> None:
    os.mkdir(flowcore_home)
    database = flowcore_home / "flowcore.db"
    async with flowcore.SQLiteStore(database):
        pass
    os.chmod(database, 0o640)  # shared with a group, say: the user's choice
    async with flowcore.Engine():
        assert await work(2) == 1
    assert _mode(database) == 0o640
