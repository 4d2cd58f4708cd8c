"""The README's first example runs and prints what the README says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
DEMO_ARGS = ["--records", "600", "--page-size", "50", "--latency", "0.001", "--failure-rate", "0.2"]


def _demo_env(tmp_path: Path) -> dict[str, str]:
    # The demo sets up .venv in the checkout when run outside it; the tests run it with
    # the interpreter they run on (flowcore installed), named as the venv to use.
    return {
        "FLOWCORE_HOME": str(tmp_path / "home"),
        "FLOWCORE_VENV": sys.prefix,
        "PATH": "/usr/bin:/bin",
    }


@pytest.mark.slow
def test_first_example_runs_and_prints_what_the_readme_says(tmp_path: Path) -> None:
    text = README.read_text()
    example = re.search(r"```python\n(.*?)```", text, re.S)
    assert example is not None, "the README lost its example"
    code = example.group(1)
    promised = re.search(r"# prints (\d+)", code)
    assert promised is not None, "the example should say what it prints"
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"FLOWCORE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == promised.group(1)
    assert (tmp_path / "home" / "flowcore.db").exists()


@pytest.mark.slow
def test_the_demo_ingests_every_record_despite_transient_failures(tmp_path: Path) -> None:
    demo = README.parent / "examples" / "ingest.py"
    out = subprocess.run(
        [sys.executable, str(demo), *DEMO_ARGS],
        capture_output=True,
        text=True,
        timeout=120,
        env=_demo_env(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    assert "ingested 600 records from 12 pages" in out.stdout
    run_id = re.search(r"flowcore runs show (\w+)", out.stdout)
    assert run_id is not None
    shown = subprocess.run(
        [sys.executable, "-m", "flowcore", "runs", "show", run_id.group(1), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"FLOWCORE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
    )
    assert shown.returncode == 0, shown.stderr
    assert '"state": "Completed"' in shown.stdout
