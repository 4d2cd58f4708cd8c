"""Cold start: ``import flowcore``, and a first flow, in fresh interpreters, against asyncio.

Run::

    python benchmarks/coldstart.py [--repeat 15] [--json PATH] [--source DIR]

Every measurement is a new ``python`` process (the interpreter running this script), timed
from inside, so interpreter start-up is not counted (it is the same for any program). One
round runs first, untimed, so every module has its bytecode cached as it would after
installing (``PYTHONDONTWRITEBYTECODE`` is removed from the children's environment):

- ``import asyncio``: the baseline, what any asyncio program pays;
- ``import flowcore``;
- ``asyncio.run`` of a coroutine, imports included: the baseline for a first run;
- a first flow, imports included: ``flowcore.run`` of a flow awaiting one no-op task, on
  the default SQLite store (``$FLOWCORE_HOME/flowcore.db``), tracing on, no exporter
  configured (every ``OTEL_*`` variable is removed from the children's environment).
  "new store": each process gets an empty ``FLOWCORE_HOME`` (the database is created
  and migrated); "existing store": every process uses one database made beforehand.

Each figure is the best of ``--repeat`` processes; the kinds are interleaved so a busy
moment of the machine hits them all alike. Ratios divide by the asyncio baseline of the
same kind. ``--source DIR`` imports flowcore from another checkout (``DIR/flowcore``),
to compare two versions on one machine. The last lines list which of the heavy packages
flowcore defers (the OpenTelemetry SDK, psutil, importlib.metadata, rich, click, httpx,
...) ``import flowcore`` and a first flow still import. Targets (issue 17; read, not
asserted): import at most 0.08 s, first flow at most 0.1 s, on a machine where asyncio's
own import takes about 0.035 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Packages a first flow does not need; the report says which of them it imported.
WATCHED = (
    "opentelemetry.sdk",
    "opentelemetry.proto",
    "psutil",
    "importlib.metadata",
    "email",
    "httpx",
    "rich",
    "click",
    "cronsim",
    "zoneinfo",
    "tempfile",
    "pickle",
    "gzip",
    "json",
    "anyio.from_thread",
    "flowcore.assets",
    "flowcore.serve",
    "flowcore.resume",
    "flowcore.views",
    "flowcore.http",
    "flowcore.cli",
    "flowcore.store.memory",
    "flowcore.telemetry.shipper",
    "flowcore.telemetry.otlp",
    "flowcore.schedules",
    "flowcore.engine.info",
    "hashlib",  # a flow defined in a file hashes it; one defined here (`-c`) does not
)

_IMPORT_ASYNCIO = """
import time
t = time.perf_counter()
import asyncio
print(time.perf_counter() - t)
"""

_IMPORT_FLOWCORE = """
import time
t = time.perf_counter()
import flowcore
print(time.perf_counter() - t)
"""

_RUN_ASYNCIO = """
import time
t = time.perf_counter()
import asyncio

async def one() -> int:
    return 1

async def main() -> int:
    return await one()

assert asyncio.run(main()) == 1
print(time.perf_counter() - t)
"""

_RUN_FLOWCORE = """
import time
t = time.perf_counter()
import flowcore

@flowcore.task
async def one() -> int:
    return 1

@flowcore.flow
async def main() -> int:
    return await one()

assert flowcore.run(main) == 1
print(time.perf_counter() - t)
"""

_MODULES = """
import sys
import flowcore

@flowcore.task
async def one() -> int:
    return 1

@flowcore.flow
async def main() -> int:
    return await one()

after_import = set(sys.modules)
assert flowcore.run(main) == 1
after_run = set(sys.modules)
for name in {watched}:
    print(name, name in after_import, name in after_run)
"""


def _environment(home: Path, source: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.pop("FLOWCORE_DB_URL", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed package has its bytecode
    env["FLOWCORE_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    return env


def _time(code: str, home: Path, source: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=_environment(home, source),
        capture_output=True,
        text=True,
        check=True,
        cwd=home.parent,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=15, help="processes per figure (best of)")
    parser.add_argument("--json", type=Path, help="write every time measured to this file")
    parser.add_argument(
        "--source", type=Path, default=ROOT, help="the checkout to import flowcore from"
    )
    args = parser.parse_args()
    source = args.source.resolve()

    with tempfile.TemporaryDirectory(prefix="flowcore-coldstart-") as tmp:
        base = Path(tmp)
        existing = base / "existing"
        kinds = {
            "import asyncio": lambda i: _time(_IMPORT_ASYNCIO, base / f"a{i}", source),
            "import flowcore": lambda i: _time(_IMPORT_FLOWCORE, base / f"b{i}", source),
            "asyncio.run, one coroutine": lambda i: _time(_RUN_ASYNCIO, base / f"c{i}", source),
            "first flow, new store": lambda i: _time(_RUN_FLOWCORE, base / f"d{i}", source),
            "first flow, existing store": lambda i: _time(_RUN_FLOWCORE, existing, source),
        }
        for measure in kinds.values():  # bytecode cached, and the existing store made
            measure(-1)
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        for i in range(args.repeat):
            for kind, measure in kinds.items():
                times[kind].append(measure(i))
        modules = subprocess.run(
            [sys.executable, "-c", _MODULES.format(watched=WATCHED)],
            env=_environment(base / "modules", source),
            capture_output=True,
            text=True,
            check=True,
            cwd=base,  # not this checkout: `python -c` imports from its working directory first
        ).stdout.split("\n")

    best = {kind: min(values) for kind, values in times.items()}
    baseline = {
        "import asyncio": "import asyncio",
        "import flowcore": "import asyncio",
        "asyncio.run, one coroutine": "asyncio.run, one coroutine",
        "first flow, new store": "asyncio.run, one coroutine",
        "first flow, existing store": "asyncio.run, one coroutine",
    }
    print(
        f"cold start, best of {args.repeat} fresh interpreters each "
        f"(Python {sys.version.split()[0]}, {sys.platform}, {os.cpu_count()} CPUs; "
        f"flowcore from {source})"
    )
    print()
    print(f"{'':28} {'best s':>8} {'median s':>9} {'÷ asyncio':>10} {'+ over asyncio s':>17}")
    for kind, value in best.items():
        ref = best[baseline[kind]]
        median = sorted(times[kind])[len(times[kind]) // 2]
        print(f"{kind:28} {value:8.4f} {median:9.4f} {value / ref:9.2f}x {value - ref:17.4f}")
    print()
    imported = [line.split() for line in modules if line.strip()]
    at_import = [name for name, a, _ in imported if a == "True"]
    at_run = [name for name, a, r in imported if r == "True" and a != "True"]
    print("deferred packages imported by `import flowcore`:", ", ".join(at_import) or "none")
    print("... and then by the first flow:", ", ".join(at_run) or "none")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "python": sys.version,
                    "source": str(source),
                    "repeat": args.repeat,
                    "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "times": times,
                    "best": best,
                    "imported_at_import": at_import,
                    "imported_by_first_flow": at_run,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
