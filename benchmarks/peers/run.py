"""flowcore against Prefect 3, DBOS and raw asyncio: the same workloads, one table.

Run (with any Python 3.11+; it sets up flowcore's .venv and the peers' venvs)::

    python3 benchmarks/peers/run.py [--quick] [--skip-install] [--engines raw,flowcore,prefect,dbos]

Each engine has a worker script (``worker_<engine>.py``, in the engine's own
venv: Prefect and DBOS in ``benchmarks/peers/.venvs/``, flowcore and raw asyncio
in flowcore's ``.venv``); every workload at every N runs in a fresh worker
process, one at a time, with a timeout, so a hung or crashed peer shows as
"error: ..." in its row and the run goes on. Workloads, measurement and caveats:
``common.py`` and ``benchmarks/README.md``. The table is printed and written to
``benchmarks/RESULTS.md``; every number, including each timed run, goes to
``benchmarks/peers/.logs/results.json`` with the workers' logs.
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("PEERBENCH_STARTED", repr(time.time()))  # survives the re-exec below
if __name__ == "__main__":  # run inside flowcore's .venv (creating it on a fresh machine)
    sys.path.insert(0, str(ROOT / ".ci"))
    import bootstrap

    bootstrap.ensure_venv()

import argparse
import datetime
import hashlib
import json
import platform
import resource
import shlex
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import install
from common import CACHE_HIT, GATHERED, RESULT_MARKER, SLEEP, SLEEPING, WORKLOADS

ENGINES = ("raw", "flowcore", "prefect", "dbos")
PEERS = ("prefect", "dbos")
LABELS = {"raw": "raw asyncio", "flowcore": "flowcore", "prefect": "Prefect", "dbos": "DBOS"}
PREFECT_VERSION = "3.9.1"
DBOS_VERSION = "3.4.0"
SIZES = (100, 1_000, 10_000, 100_000)
PEER_SIZES = (100, 1_000)
QUICK_SIZES = (100, 1_000, 10_000)
QUICK_PEER_SIZES = (100,)
BIG = 10_000  # from this N on, --repeat-big timed runs instead of --repeat
SMALL = 1_000  # below this N, --repeat-small timed runs instead of --repeat
LOGS = HERE / ".logs"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
#: Targets (reported, never asserted).
PEER_TARGET = 100.0  # peer µs/task ÷ flowcore µs/task, where both persist state
RAW_TARGET = 5.0  # flowcore ÷ raw on gathered no-op tasks
#: A row is flagged when other programs used at least this share of the CPUs meanwhile.
BUSY = 0.10


@dataclass
class Measurement:
    engine: str
    workload: str
    n: int
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    wall_s: float = 0.0  # of the worker process, set-up and waits included
    other_cpu: float | None = None  # share of the CPUs other programs used meanwhile
    rounds: list[float | None] = field(default_factory=list)  # µs/task of every round

    @property
    def us(self) -> float | None:
        value = self.data.get("us_per_task")
        return None if self.error or value is None else float(value)


def cpu_busy_seconds() -> float | None:
    """CPU time all programs have used since boot, from /proc/stat (None without it)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait
    busy = sum(fields[:3]) + sum(fields[5:8])
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this process and of the workers it has waited for (and theirs)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").replace("--", "-")


def run_worker(
    engine: str,
    python: Path,
    workload: str,
    n: int,
    repeat: int,
    args: argparse.Namespace,
    round_no: int = 1,
) -> Measurement:
    """One workload at one N in a fresh worker process (killed with its children on timeout)."""
    cmd = [
        str(python),
        str(HERE / f"worker_{engine}.py"),
        "--workload",
        workload,
        "--n",
        str(n),
        "--repeat",
        str(repeat),
        "--warmup",
        str(args.warmup),
        "--loop",
        args.loop,
    ]
    suffix = f"-round{round_no}" if round_no > 1 else ""
    log_path = LOGS / f"{engine}-{slug(workload)}-{n}{suffix}.log"
    result = Measurement(engine, workload, n)
    busy_before, own_before = cpu_busy_seconds(), own_cpu_seconds()
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="peerbench-cwd-") as cwd,
        open(log_path, "w") as log,
    ):
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,  # its own process group: a timeout kills its servers too
        )
        try:
            stdout, _ = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, _ = proc.communicate()
            result.error = f"timed out after {args.timeout:g} s"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.write(stdout)
    result.wall_s = time.perf_counter() - started
    busy_after = cpu_busy_seconds()
    if busy_before is not None and busy_after is not None and result.wall_s > 0:
        other = (busy_after - busy_before) - (own_cpu_seconds() - own_before)
        result.other_cpu = max(0.0, other) / (result.wall_s * (os.cpu_count() or 1))
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if lines:
        result.data = json.loads(lines[-1][len(RESULT_MARKER) :])
        if result.error is None and result.data.get("error"):
            result.error = str(result.data["error"])
    elif result.error is None:
        tail = [line for line in log_path.read_text().splitlines() if line.strip()]
        last = tail[-1].strip() if tail else ""
        result.error = f"worker exited with code {proc.returncode}, no result: {last}"[:300]
    return result


# -- formatting -------------------------------------------------------------------------------


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_us(us: float) -> str:
    if us < 10:
        return f"{us:.2f}"
    if us < 1000:
        return f"{us:.1f}"
    return f"{us:,.0f}"


def fmt_bytes(n: float) -> str:
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n / 1024 / 1024:.1f} MB"


def fmt_ratio(x: float) -> str:
    return f"{x:,.0f}×" if x >= 100 else f"{x:.1f}×" if x >= 10 else f"{x:.2f}×"


def fmt_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def row_cells(m: Measurement, by_key: dict[tuple[str, str, int], Measurement]) -> list[str]:
    """workload, N, engine, wall, µs/task, peak RSS growth, ÷ flowcore, flowcore ÷ raw, notes."""
    head = [m.workload, f"{m.n:,}", LABELS[m.engine]]
    notes: list[str] = []
    if m.workload == CACHE_HIT and m.data.get("cache_note"):
        notes.append(str(m.data["cache_note"]))
    if m.other_cpu is not None and m.other_cpu >= BUSY:
        notes.append(f"other programs used {m.other_cpu:.0%} of the CPUs meanwhile")
    if m.error:
        return [*head, f"error: {m.error}"[:120], "", "", "", "", "; ".join(notes)]
    us = m.us or 0.0
    growth = float(m.data.get("rss_growth_bytes", 0))
    mem = f"{fmt_bytes(growth)} ({growth / m.n / 1024:.1f} KB/task)"
    fc = by_key.get(("flowcore", m.workload, m.n))
    raw = by_key.get(("raw", m.workload, m.n))
    vs_fc = ""
    if m.engine in PEERS and fc is not None and fc.us:
        vs_fc = fmt_ratio(us / fc.us)
        if m.engine == "dbos" and m.workload == CACHE_HIT:
            vs_fc += " †"
    vs_raw = ""
    if m.engine == "flowcore" and raw is not None and raw.us:
        vs_raw = fmt_ratio(us / raw.us)
    if len(m.rounds) > 1:
        shown = ", ".join(fmt_us(r) if r is not None else "error" for r in m.rounds)
        notes.append(f"rounds: {shown} µs/task")
    if m.engine == "prefect":
        times = m.data.get("times_s", [])
        settles = m.data.get("settle_s", [])
        if times and settles:
            best = min(range(len(times)), key=lambda k: times[k])
            notes.append(f"task runs recorded {settles[best]:.1f} s after return")
    return [
        *head,
        fmt_time(float(m.data["best_s"])),
        fmt_us(us),
        mem,
        vs_fc,
        vs_raw,
        "; ".join(notes),
    ]


COLUMNS = (
    "workload",
    "N",
    "engine",
    "wall (best)",
    "µs/task",
    "peak RSS growth",
    "÷ flowcore (µs/task)",
    "flowcore ÷ raw",
    "notes",
)


def ordered(results: list[Measurement]) -> list[Measurement]:
    rank = {e: k for k, e in enumerate(ENGINES)}
    return sorted(results, key=lambda m: (WORKLOADS.index(m.workload), m.n, rank[m.engine]))


def make_table(results: list[Measurement], title: str) -> Table:
    by_key = {(m.engine, m.workload, m.n): m for m in results}
    table = Table(title=title)
    for col in COLUMNS:
        right = col not in ("workload", "engine", "notes")
        table.add_column(col, justify="right" if right else "left", overflow="fold")
    previous: tuple[str, int] | None = None
    for m in ordered(results):
        if previous is not None and previous != (m.workload, m.n):
            table.add_section()
        previous = (m.workload, m.n)
        table.add_row(*row_cells(m, by_key))
    return table


def markdown_table(results: list[Measurement]) -> str:
    by_key = {(m.engine, m.workload, m.n): m for m in results}
    right = [col not in ("workload", "engine", "notes") for col in COLUMNS]
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---:" if r else "---" for r in right) + "|",
    ]
    for m in ordered(results):
        cells = [c.replace("|", "\\|") for c in row_cells(m, by_key)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(results: list[Measurement]) -> list[str]:
    """One line per target: whether it is met, with the smallest ratio of each workload."""
    by_key = {(m.engine, m.workload, m.n): m for m in results}
    out = []
    for peer in PEERS:
        worst: dict[str, tuple[float, int, float]] = {}  # workload -> (ratio, N, above floor)
        short: list[str] = []  # cells under the target that some engine could have met
        out_of_reach: list[str] = []  # cells no engine could meet (see below)
        for m in results:
            if m.engine != peer or m.us is None:
                continue
            if peer == "dbos" and m.workload == CACHE_HIT:
                continue  # workflow-id replay is not a cache: DBOS does not persist a hit
            fc = by_key.get(("flowcore", m.workload, m.n))
            if fc is None or not fc.us:
                continue
            ratio = m.us / fc.us
            floor = SLEEP * 1e6 / m.n if m.workload == SLEEPING else 0.0
            above = (m.us - floor) / (fc.us - floor) if fc.us > floor else float("inf")
            if m.workload not in worst or ratio < worst[m.workload][0]:
                worst[m.workload] = (ratio, m.n, above)
            if ratio >= PEER_TARGET:
                continue
            cell = f"{m.workload} at N={m.n:,} ({fmt_ratio(ratio)})"
            # The sleep is in every engine's wall: an engine with no overhead at all
            # would take `floor` µs a task, so no engine can be faster than this cap.
            cap = m.us / floor if floor else float("inf")
            if cap < PEER_TARGET:
                out_of_reach.append(
                    f"{cell}, where the sleep alone ({fmt_us(floor)} µs/task) caps any "
                    f"engine's ratio at {fmt_ratio(cap)}"
                )
            else:
                short.append(cell)
        if not worst:
            continue
        if short:
            verdict = f"not met ({'; '.join(short)})"
        elif out_of_reach:
            verdict = (
                "met wherever an engine can meet it; out of reach for any engine: "
                + "; ".join(out_of_reach)
            )
        else:
            verdict = "met"
        parts = []
        for workload in WORKLOADS:
            if workload in worst:
                ratio, n, above = worst[workload]
                part = f"{workload} {fmt_ratio(ratio)} (N={n:,})"
                if workload == SLEEPING:
                    part += f", {fmt_ratio(above)} counting only the time above the 10 ms sleep"
                parts.append(part)
        out.append(
            f"flowcore ≥{PEER_TARGET:g}× faster per task than {LABELS[peer]} on every workload "
            f"where both persist state: {verdict}. Smallest ratio per workload: "
            f"{'; '.join(parts)}"
        )
    raw_ratios = []
    for m in results:
        if m.engine == "flowcore" and m.workload == GATHERED and m.us is not None:
            raw = by_key.get(("raw", m.workload, m.n))
            if raw is not None and raw.us:
                raw_ratios.append((m.us / raw.us, m.n))
    if raw_ratios:
        worst_raw = max(raw_ratios)
        verdict = "met" if worst_raw[0] <= RAW_TARGET else "not met"
        each = ", ".join(
            f"N={n:,}: {fmt_ratio(r)}" for r, n in sorted(raw_ratios, key=lambda x: x[1])
        )
        out.append(
            f"flowcore within {RAW_TARGET:g}× of raw asyncio on gathered no-op tasks: {verdict} "
            f"({each})"
        )
    return out


# -- environment ------------------------------------------------------------------------------


def git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "flowcore"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + (" (flowcore/ modified)" if dirty else "")


def source_digest() -> str:
    """A digest of flowcore's source files, to tell whether they changed during the run."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "flowcore").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            pass
    return digest.hexdigest()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "").replace(",", "")) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"sizes are integers separated by commas: {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be >= 1: {text!r}")
    return sizes


def parse_engines(text: str) -> list[str]:
    engines = [e.strip().lower() for e in text.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        raise argparse.ArgumentTypeError(f"engines are some of {','.join(ENGINES)}: {text!r}")
    return [e for e in ENGINES if e in engines]


def parse_workloads(text: str) -> list[str]:
    chosen = []
    for part in text.split(","):
        matches = [w for w in WORKLOADS if part.strip().lower() in w]
        if len(matches) != 1:
            raise argparse.ArgumentTypeError(
                f"{part!r} must name one of: {'; '.join(WORKLOADS)} (a unique part is enough)"
            )
        chosen.append(matches[0])
    return [w for w in WORKLOADS if w in chosen]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--engines", type=parse_engines, default=list(ENGINES), help="default: all four"
    )
    parser.add_argument("--workloads", type=parse_workloads, default=list(WORKLOADS))
    parser.add_argument(
        "--sizes", type=parse_sizes, help="N for flowcore and raw asyncio (default 100,...,100000)"
    )
    parser.add_argument("--peer-sizes", type=parse_sizes, help="N for the peers (default 100,1000)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="N up to 10,000 (peers: 100) and one timed run each, unless given explicitly",
    )
    parser.add_argument(
        "--repeat-small",
        type=int,
        help=f"timed runs for N < {SMALL:,}, best kept (10: a run of a few ms is at the "
        "mercy of one scheduling hiccup on a shared machine)",
    )
    parser.add_argument(
        "--repeat", type=int, help=f"timed runs for {SMALL:,} <= N < {BIG:,}, best kept (3)"
    )
    parser.add_argument("--repeat-big", type=int, help=f"timed runs for N >= {BIG:,} (1)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="raw asyncio and flowcore: measure every row this many times, spread over the "
        "run (between the peers), and keep each row's best round (3; --quick: 1)",
    )
    parser.add_argument("--warmup", type=int, default=100, help="tasks in the warm-up run (100)")
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds per worker process (600)"
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio"),
        default="auto",
        help="raw and flowcore: uvloop when importable (auto, flowcore.run's default) or "
        "asyncio's loop; the peers always run on asyncio's loop",
    )
    parser.add_argument("--skip-install", action="store_true", help="use the venvs as they are")
    parser.add_argument("--prefect-version", default=PREFECT_VERSION)
    parser.add_argument("--dbos-version", default=DBOS_VERSION)
    parser.add_argument(
        "--install-method",
        choices=("auto", "relaxed"),
        default="auto",
        help="relaxed: skip the plain `pip install NAME==VERSION` attempt",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS_MD, help="markdown report (benchmarks/RESULTS.md)"
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        help="measure nothing: write the report again from a results.json this script wrote "
        "(give the options the run was made with, for the repeat counts)",
    )
    args = parser.parse_args(argv)
    sizes = args.sizes or list(QUICK_SIZES if args.quick else SIZES)
    peer_sizes = args.peer_sizes or list(QUICK_PEER_SIZES if args.quick else PEER_SIZES)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    repeat_big = args.repeat_big if args.repeat_big is not None else 1
    repeat_small = args.repeat_small if args.repeat_small is not None else (1 if args.quick else 10)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if min(repeat_small, repeat, repeat_big, rounds) < 1:
        parser.error("--repeat-small, --repeat, --repeat-big and --rounds must be >= 1")
    repeats = Repeats(repeat_small, repeat, repeat_big, rounds)
    if args.from_json is not None:
        console = Console(width=200)
        results, env = load_results(args.from_json)
        LOGS.mkdir(exist_ok=True)
        publish(console, results, env, repeats, args.output)
        return 0

    commit_at_start, digest_at_start = git_commit(), source_digest()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally kills the worker
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    LOGS.mkdir(exist_ok=True)
    (LOGS / ".gitignore").write_text("*\n")

    # -- the peers' venvs
    pythons: dict[str, Path] = {"raw": Path(sys.executable), "flowcore": Path(sys.executable)}
    versions: dict[str, str] = {}
    setup_errors: dict[str, str] = {}
    wanted = {"prefect": args.prefect_version, "dbos": args.dbos_version}
    for peer in (p for p in PEERS if p in args.engines):
        try:
            if args.skip_install:
                found = install.read_stamp(peer)
                if found is None:
                    raise install.InstallError(
                        f"not installed in benchmarks/peers/.venvs/{peer} "
                        "(run without --skip-install)"
                    )
                console.print(f"{peer}: using {found.version} ({found.method})")
            else:
                found = install.install(
                    peer,
                    wanted[peer],
                    lambda s: console.print(s, markup=False, highlight=False),
                    args.install_method,
                )
        except (install.InstallError, OSError, subprocess.SubprocessError) as exc:
            setup_errors[peer] = str(exc)
            console.print(f"[red]{peer}: {exc}[/red]")
            continue
        pythons[peer] = found.python
        versions[peer] = f"{found.version} ({found.method})"

    # -- the measurements
    plan = measuring_plan(args.engines, args.workloads, sizes, peer_sizes, rounds)
    best: dict[tuple[str, str, int], Measurement] = {}
    with console.status("measuring ...") as status:
        for k, (round_no, engine, workload, n) in enumerate(plan, 1):
            key = (engine, workload, n)
            if engine in setup_errors:
                best[key] = Measurement(engine, workload, n, error=setup_errors[engine])
                continue
            status.update(f"[{k}/{len(plan)}] {LABELS[engine]}: {workload}, N={n:,} ...")
            m = run_worker(engine, pythons[engine], workload, n, repeats.at(n), args, round_no)
            best[key] = keep_best(best.get(key), m)
            shown = f"error: {m.error}" if m.error else f"{fmt_us(m.us or 0)} µs/task"
            of = f" (round {round_no} of {rounds})" if engine not in PEERS and rounds > 1 else ""
            console.print(
                f"[{k}/{len(plan)}] {LABELS[engine]:<11} {workload:<26} N={n:<7,} {shown}"
                f"  ({fmt_duration(m.wall_s)}){of}",
                markup=False,
                highlight=False,
            )
    results = list(best.values())

    # -- the report
    started = float(os.environ.get("PEERBENCH_STARTED", "0")) or time.time()
    total = time.time() - started
    loops = sorted({f"{LABELS[m.engine]}: {m.data['loop']}" for m in results if m.data.get("loop")})
    memory = next((m.data["memory_method"] for m in results if m.data.get("memory_method")), "")
    command = shlex.join(["python3", "benchmarks/peers/run.py", *sys.argv[1:]])
    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs ({cpu_model()}), "
        f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "flowcore": f"{_flowcore_version()}, commit {commit_at_start}"
        + ("" if source_digest() == digest_at_start else " (flowcore/ changed during the run)"),
        "prefect": versions.get("prefect", setup_errors.get("prefect", "not run")),
        "dbos": versions.get("dbos", setup_errors.get("dbos", "not run")),
        "event loops": "; ".join(loops),
        "memory": memory,
        "other programs' CPU use": busy_summary(results),
        "command": command,
        "total wall time": fmt_duration(total),
    }
    publish(console, results, env, repeats, args.output)
    return 0


def publish(
    console: Console,
    results: list[Measurement],
    env: dict[str, str],
    repeats: Repeats,
    output: Path,
) -> None:
    """Print the table and the targets; write the report and results.json."""
    title = (
        f"flowcore vs Prefect 3, DBOS and raw asyncio (best of {repeats.described()}; "
        f"raw and flowcore: best of {repeats.rounds} rounds)"
    )
    console.print(make_table(results, title))
    goals = targets(results)
    for line in goals:
        console.print("target: " + line, markup=False, highlight=False)
    console.print(f"total wall time {env['total wall time']}")
    output.write_text(report(env, results, goals, repeats))
    (LOGS / "results.json").write_text(
        json.dumps(
            {
                "environment": env,
                "results": [
                    {
                        **m.data,
                        "engine": m.engine,  # the runner's key, not the worker's label
                        "workload": m.workload,
                        "n": m.n,
                        "error": m.error,
                        "worker_wall_s": m.wall_s,
                        "other_cpu_share": m.other_cpu,
                        "rounds_us_per_task": m.rounds,
                    }
                    for m in ordered(results)
                ],
            },
            indent=2,
        )
        + "\n"
    )
    shown_output = output.resolve()
    if shown_output.is_relative_to(ROOT):
        shown_output = shown_output.relative_to(ROOT)
    console.print(f"wrote {shown_output} and benchmarks/peers/.logs/results.json")


def load_results(path: Path) -> tuple[list[Measurement], dict[str, str]]:
    """The measurements and environment of a results.json written by :func:`publish`."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SystemExit(
            f"--from-json {path}: cannot read it ({exc.strerror}); a run writes "
            "benchmarks/peers/.logs/results.json"
        ) from exc
    try:
        saved = json.loads(text)
        env: dict[str, str] = saved["environment"]
        results = []
        keys = {label.lower(): key for key, label in LABELS.items()}  # older files: labels
        for row in saved["results"]:
            data = dict(row)
            engine = data.pop("engine")
            engine = keys.get(engine.lower(), engine)
            m = Measurement(engine, data.pop("workload"), int(data.pop("n")))
            m.error = data.pop("error", None)
            m.wall_s = float(data.pop("worker_wall_s", 0.0))
            m.other_cpu = data.pop("other_cpu_share", None)
            m.rounds = data.pop("rounds_us_per_task", None) or []
            m.data = data
            results.append(m)
    except (ValueError, KeyError, TypeError) as exc:
        raise SystemExit(
            f"--from-json {path}: not a results.json of this script (no {exc})"
            if isinstance(exc, KeyError)
            else f"--from-json {path}: not a results.json of this script ({exc})"
        ) from exc
    return results, env


def busy_summary(results: list[Measurement]) -> str:
    shares = [m.other_cpu for m in results if m.other_cpu is not None]
    if not shares:
        return "unknown (no /proc/stat)"
    flagged = sum(1 for x in shares if x >= BUSY)
    return (
        f"average {sum(shares) / len(shares):.0%} of the CPUs while the workers ran, "
        f"at most {max(shares):.0%}; {flagged} of {len(shares)} rows at {BUSY:.0%} or more "
        "(flagged in their notes: slower than on a quiet machine)"
    )


def _flowcore_version() -> str:
    try:
        from importlib.metadata import version

        return version("flowcore")
    except Exception:
        return "unknown"


def measuring_plan(
    engines: list[str],
    workloads: list[str],
    sizes: list[int],
    peer_sizes: list[int],
    rounds: int,
) -> list[tuple[int, str, str, int]]:
    """(round, engine, workload, N) in the order they run.

    The machine's speed drifts over minutes (other virtual machines on the host), and
    the ratio flowcore ÷ raw compares two rows: so raw asyncio and flowcore take turns
    at every workload and N, in ``rounds`` passes spread between the peers' (slow,
    measured once), and each row keeps its best pass.
    """
    local = [
        (engine, workload, n)
        for workload in workloads
        for n in sizes
        for engine in engines
        if engine not in PEERS
    ]
    peers = [
        [(engine, workload, n) for workload in workloads for n in peer_sizes]
        for engine in engines
        if engine in PEERS
    ]
    plan: list[tuple[int, str, str, int]] = []
    for k in range(max(rounds, len(peers))):
        if k < rounds:
            plan.extend((k + 1, *item) for item in local)
        if k < len(peers):
            plan.extend((1, *item) for item in peers[k])
    return plan


def keep_best(kept: Measurement | None, new: Measurement) -> Measurement:
    """The better of two rounds of one row; a round that failed makes the row an error
    (a failure is news, not noise), and every round's µs/task is kept."""
    history = [*(kept.rounds if kept is not None else []), new.us]
    if kept is None or (new.error is not None and kept.error is None):
        chosen = new
    elif kept.error is not None:
        chosen = kept
    else:
        chosen = new if (new.us or 0.0) < (kept.us or 0.0) else kept
    chosen.rounds = history
    return chosen


@dataclass(frozen=True)
class Repeats:
    """Timed runs per worker, by N: short runs get more tries (their best is noise-bound);
    and passes over the raw asyncio and flowcore rows (``rounds``)."""

    small: int
    normal: int
    big: int
    rounds: int

    def at(self, n: int) -> int:
        return self.small if n < SMALL else self.big if n >= BIG else self.normal

    def described(self) -> str:
        return (
            f"{self.small} for N < {SMALL:,}, {self.normal} for N < {BIG:,}, "
            f"{self.big} from N = {BIG:,}"
        )


def report(
    env: dict[str, str],
    results: list[Measurement],
    goals: list[str],
    repeats: Repeats,
) -> str:
    header = "\n".join(f"| {key} | {value} |" for key, value in env.items())
    goal_lines = "\n".join(f"- {line}" for line in goals) or "- (not enough engines run)"
    return f"""# flowcore vs Prefect 3, DBOS and raw asyncio

Written by `benchmarks/peers/run.py`; what each workload does on each engine, and
the caveats, are in `benchmarks/README.md` (section "peers").

| | |
|---|---|
{header}

{markdown_table(results)}

Wall: the best of {repeats.described()} timed runs, each
after a warm-up run of the same workload (100 tasks) in the same process; one fresh worker
process per engine, workload and N. Raw asyncio and flowcore take turns at every row in
{repeats.rounds} round(s) spread over the run (between the peers), each in fresh processes, and each
row keeps its best round; the notes list every round's µs/task. µs/task = wall / N.
"÷ flowcore": this engine's µs/task divided by flowcore's at the same workload and N.
"flowcore ÷ raw": flowcore's µs/task divided by raw asyncio's. Peak RSS growth: the
highest resident set size of the worker process and its child processes (Prefect's
server), sampled every 5 ms from just before a timed run until the engine is idle after it,
minus the RSS just before; the largest over the timed runs.

flowcore persists every task run to SQLite before the flow returns; DBOS commits each step's
output to SQLite before the step returns; Prefect's flow returns before its server has
recorded the task runs: "task runs recorded X s after return" is how long its server went
on writing them after the flow returned (not in the wall time; waited out before the next
run). † DBOS has no result cache: its cache-hit row is
N one-step workflows started again with the workflow ids they already completed under
(workflow-id replay), not a per-task cache hit, and is left out of the targets.

Targets (for the reader; nothing asserts them):

{goal_lines}
"""


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
