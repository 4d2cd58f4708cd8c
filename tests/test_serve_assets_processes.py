"""Reactive assets across processes: two ``python -m flowcore serve FILE.py`` on one
SQLite store, a third process materialises the upstream; the downstream is
materialised exactly once per set of upstream data versions, by one of the servers.

Waits are for conditions in the store or the files the assets write, with generous
deadlines; nothing asserts a duration.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from flowcore import SQLiteStore
from flowcore.records import AssetEvaluationRecord

ASSETS = textwrap.dedent(
    """
    import json
    from pathlib import Path

    import flowcore
    from flowcore.assets import asset, on_upstream_change

    HERE = Path(__file__).parent


    @asset
    def up() -> int:
        return json.loads((HERE / "value.json").read_text())


    @asset(automation=on_upstream_change(debounce=0.2))
    def down(up: int) -> int:
        with (HERE / "calls.txt").open("a") as out:
            out.write(f"{up}\\n")
        return up * 10
    """
)

MATERIALISE_UP = textwrap.dedent(
    """
    import sys

    import flowcore
    from flowcore.assets import AssetGraph, materialize
    from flowcore.entrypoints import load_module
    from pathlib import Path

    graph = AssetGraph.from_module(load_module(Path(sys.argv[1])))
    result = materialize(["up"], graph=graph, only_stale=False)
    assert result.ok, result
    """
)


class Setup:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.home = tmp / "home"
        self.file = tmp / "assets.py"
        self.file.write_text(ASSETS)
        self.env = {**os.environ, "FLOWCORE_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        self.procs: list[subprocess.Popen[str]] = []
        self.logs: list[Path] = []

    def serve(self) -> None:
        log = self.tmp / f"server-{len(self.procs)}.log"
        with log.open("w") as out:
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "flowcore", "serve", str(self.file), "--grace", "30"],
                    env=self.env,
                    cwd=self.tmp,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        self.logs.append(log)

    def materialise_up(self, value: int) -> None:
        (self.tmp / "value.json").write_text(str(value))
        done = subprocess.run(
            [sys.executable, "-c", MATERIALISE_UP, str(self.file)],
            env=self.env,
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr

    def calls(self) -> list[str]:
        path = self.tmp / "calls.txt"
        return path.read_text().split() if path.exists() else []

    def evaluations(self) -> list[AssetEvaluationRecord]:
        async def main() -> list[AssetEvaluationRecord]:
            async with SQLiteStore(self.home / "flowcore.db") as store:
                return await store.asset_evaluations("down", limit=10_000)

        return anyio.run(main)

    def output(self) -> str:
        return "\n".join(f"--- {log.name}:\n{log.read_text()[-3000:]}" for log in self.logs)

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.output()}")
            for proc in self.procs:
                if proc.poll() is not None:
                    raise AssertionError(f"a server exited {proc.returncode}\n{self.output()}")
            time.sleep(0.05)

    def stop(self) -> list[int]:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=60))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return codes


def test_two_servers_materialise_the_downstream_once_per_upstream_version(
    tmp_path: Path,
) -> None:
    setup = Setup(tmp_path)
    try:
        setup.serve()
        setup.serve()
        # Both servers up: each has looked at the asset ("never materialised" upstream).
        setup.wait_for(
            "both servers to evaluate",
            lambda: (
                (setup.home / "flowcore.db").exists()
                and len({e.holder for e in setup.evaluations()}) == 2
            ),
        )
        setup.materialise_up(1)
        setup.wait_for("the downstream to be materialised", lambda: setup.calls() == ["1"])
        # Both servers saw this upstream version and decided (one ran it; the other saw
        # the claim taken, or the downstream already up to date).
        setup.wait_for(
            "the downstream's run to be recorded",
            lambda: any(e.decision == "materialized" for e in setup.evaluations()),
        )
        # The same data version again: nothing to react to. A new one: once more.
        setup.materialise_up(1)
        setup.materialise_up(2)
        setup.wait_for("the second reaction", lambda: len(setup.calls()) >= 2)
        setup.wait_for(
            "its run to be recorded",
            lambda: sum(e.decision == "materialized" for e in setup.evaluations()) >= 2,
        )
        assert setup.stop() == [0, 0], setup.output()
        assert setup.calls() == ["1", "2"], setup.output()
        claims = [e for e in setup.evaluations() if e.decision == "materialize"]
        assert len(claims) == 2, claims
    finally:
        for proc in setup.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
