"""Cold start: ``import flowcore`` and a first flow import only what they use (issue 17).

What a first flow does not use is imported when first used: the OpenTelemetry SDK
(an application's provider, an SDK exporter), psutil (a run of this machine left
Running), ``importlib.metadata`` (a plugin's name), the assets, serving, resuming,
HTTP helpers, result readers, schedules, the views of the current run and the memory
store (``flowcore.__getattr__``, ``flowcore.store.__getattr__``), cron schedules' time
zones, and a few standard modules; run records get their decoders when first read. Each
check runs a fresh interpreter, since this one has imported everything already; none
measures time (``benchmarks/coldstart.py`` does).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: Imported by neither ``import flowcore`` nor a first flow (one task, the default SQLite
#: store, tracing on, no exporter).
DEFERRED = (
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
)

#: Not imported by ``import flowcore``, but by a first flow defined in a file: it hashes
#: its source (``Flow.entrypoint_hash``). hashlib loads OpenSSL's library, a good part
#: of a millisecond that importing flowcore need not pay (hmac and secrets import it).
#: Imported by a first flow, not by ``import flowcore`` (a program that only defines
#: flows, or runs them on another store, never needs SQLite).
NOT_AT_IMPORT = ("hashlib", "hmac", "secrets", "sqlite3", "aiosqlite", "flowcore.store.sqlite")

_FIRST_FLOW = """
import flowcore

@flowcore.task
async def one() -> int:
    return 1

@flowcore.flow
async def main() -> int:
    return await one()

assert flowcore.run(main) == 1
"""


def _python(code: str, home: Path, **env: str) -> str:
    """Run ``code`` in a fresh interpreter (no ``OTEL_*`` variable, ``FLOWCORE_HOME`` at
    ``home``); its stdout."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environ.pop("FLOWCORE_DB_URL", None)
    environ.update(FLOWCORE_HOME=str(home), **env)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=environ,
        cwd=home.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def _imported_after(code: str, home: Path, names: tuple[str, ...] = DEFERRED) -> list[str]:
    """Which of ``names`` are imported once ``code`` has run."""
    out = _python(f"{code}\nimport sys\nprint([m for m in {names!r} if m in sys.modules])", home)
    found: list[str] = ast.literal_eval(out.splitlines()[-1])
    return found


def test_import_flowcore_imports_none_of_the_deferred_packages(tmp_path: Path) -> None:
    assert _imported_after("import flowcore", tmp_path / "home") == []


def test_import_flowcore_neither_hashes_nor_opens_sqlite(tmp_path: Path) -> None:
    assert _imported_after("import flowcore", tmp_path / "home", NOT_AT_IMPORT) == []


def test_a_value_that_is_not_a_schedule_is_refused_before_any_schedule_is_made(
    tmp_path: Path,
) -> None:
    # flowcore.schedules is not imported yet, so nothing given can be one of its schedules.
    out = _python(
        """
        import sys
        import flowcore

        async def f() -> None: ...

        try:
            flowcore.flow(schedule="*/5 * * * *")(f)
        except flowcore.ConfigurationError as exc:
            print(exc)
        print("flowcore.schedules" in sys.modules, flowcore.flow(schedule=[])(f).schedules)
        """,
        tmp_path / "home",
    )
    assert out.splitlines() == [
        "invalid options for flow 'f': `schedule` must be flowcore.cron(...), "
        "flowcore.every(...) or a list of them, got '*/5 * * * *'",
        "False ()",
    ]


def test_a_first_flow_imports_none_of_them_either(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert _imported_after(_FIRST_FLOW, home) == []
    assert (home / "flowcore.db").exists()  # it ran on the default SQLite store
    # And on the store that run left (a store to open, not to create):
    assert _imported_after(_FIRST_FLOW, home) == []


def test_a_first_flow_with_no_file_to_hash_loads_no_hashing(tmp_path: Path) -> None:
    # Regression: the SQLite store imported `secrets` (hmac, hashlib, OpenSSL's library:
    # 2-3 ms of a first flow) for the asset clock, which a run without assets never
    # moves. A flow defined in a file still imports hashlib, to hash its source.
    home = tmp_path / "home"
    assert _imported_after(_FIRST_FLOW, home, ("hashlib", "hmac", "secrets")) == []


def test_every_public_name_is_there_and_is_its_modules_object(tmp_path: Path) -> None:
    out = _python(
        """
        import importlib
        import flowcore

        wrong = []
        for name, module in flowcore._LAZY.items():
            value = getattr(flowcore, name)
            if value is not getattr(importlib.import_module(module, "flowcore"), name):
                wrong.append(name)
        missing = [name for name in flowcore.__all__ if not hasattr(flowcore, name)]
        namespace = {}
        exec("from flowcore import *", namespace)
        print(wrong, missing, sorted(set(flowcore.__all__) - set(namespace)))
        lazy = set(flowcore._LAZY)
        print(lazy <= set(dir(flowcore)) and lazy <= set(flowcore.__all__))
        """,
        tmp_path / "home",
    )
    assert out.split("\n")[:2] == ["[] [] []", "True"]


def test_every_name_is_the_object_of_the_module_that_defines_it(tmp_path: Path) -> None:
    # Imported by name first (a lazy name's first read is `from flowcore import name`),
    # then read as an attribute: both give the object the defining module holds.
    out = _python(
        """
        import sys, types
        import flowcore

        wrong = []
        for name in flowcore.__all__:
            namespace = {}
            exec(f"from flowcore import {name}", namespace)
            value = getattr(flowcore, name)
            if namespace[name] is not value:
                wrong.append(f"{name}: `from flowcore import` gives another object")
            elif isinstance(value, types.ModuleType):
                if sys.modules.get(value.__name__) is not value:
                    wrong.append(f"{name}: not the module {value.__name__}")
            elif name != "__version__":
                home = sys.modules[value.__module__]
                if getattr(home, value.__qualname__, None) is not value:
                    wrong.append(f"{name}: not {value.__module__}.{value.__qualname__}")
        print(wrong, len(flowcore.__all__))
        """,
        tmp_path / "home",
    )
    wrong, count = out.strip().rsplit(" ", 1)
    assert wrong == "[]"
    assert int(count) > 90


def test_a_first_flow_makes_no_decoder_of_run_records(tmp_path: Path) -> None:
    # Making one resolves a record's annotations; a run that reads none back needs none.
    out = _python(
        _FIRST_FLOW
        + """
from flowcore.store.sqlite import rows
print([d for d in ("_flow_dec", "_task_dec", "_span_dec") if "decode" in vars(getattr(rows, d))])
""",
        tmp_path / "home",
    )
    assert out.splitlines()[-1] == "[]"


def test_unknown_names_are_still_attribute_errors() -> None:
    import flowcore

    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        flowcore.no_such_name  # type: ignore[attr-defined]  # noqa: B018


def test_serve_and_resume_stay_the_functions_when_their_modules_are_imported_first(
    tmp_path: Path,
) -> None:
    # Importing a submodule binds it on its package: flowcore.serve (a subpackage) and
    # flowcore.resume (a module) would hide the functions of the same names.
    out = _python(
        """
        import flowcore.serve.server
        from flowcore.serve import api
        import flowcore.resume
        import flowcore

        print(flowcore.serve is api.serve, callable(flowcore.resume), flowcore.resume.__name__)
        """,
        tmp_path / "home",
    )
    assert out.split() == ["True", "True", "resume"]


def test_a_provider_the_application_set_is_still_found(tmp_path: Path) -> None:
    out = _python(
        """
        import anyio
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        import flowcore

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)

        @flowcore.task
        async def one() -> int:
            return 1

        @flowcore.flow
        async def main() -> int:
            return await one()

        assert flowcore.run(main) == 1
        print(sorted(span.name for span in exporter.get_finished_spans()))
        """,
        tmp_path / "home",
    )
    assert out.strip() == "['flow main', 'task one']"


def test_a_provider_named_by_otel_python_tracer_provider_is_still_found(
    tmp_path: Path,
) -> None:
    # The API makes that provider when first asked, so nothing has imported the SDK yet.
    out = _python(
        """
        import sys
        import anyio
        import flowcore

        async def main() -> None:
            assert "opentelemetry.sdk.trace" not in sys.modules
            async with flowcore.Engine() as engine:
                assert engine.tracing is not None
                print(type(engine.tracing.tracer).__module__)

        anyio.run(main)
        """,
        tmp_path / "home",
        OTEL_PYTHON_TRACER_PROVIDER="sdk_tracer_provider",
    )
    assert out.strip() == "opentelemetry.sdk.trace"
