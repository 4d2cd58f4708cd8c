"""examples/assets/pipeline.py: the ingestion demo's records → cleaned → daily → report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from flowcore.entrypoints import load_module

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "assets" / "pipeline.py"


@pytest.fixture
def pipeline() -> ModuleType:
    return load_module(EXAMPLE)


def test_the_example_materialises_then_skips_what_is_fresh(
    pipeline: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pipeline.main([]) == 0
    out = capsys.readouterr().out
    assert "materialized 27 assets and partitions" in out  # 3 assets + 24 days
    assert "again, only what is stale: 0 materialized, 27 skipped as fresh" in out
    assert "4 assets: 4 fresh" in out
    assert "partitions: 24 materialized, 0 stale, 0 missing" in out
    assert "└── warehouse/daily  fresh (0/24 stale)  <- all partitions" in out


def test_a_duplicate_record_fails_the_blocking_check_and_blocks_downstream(
    pipeline: ModuleType, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert pipeline.main([]) == 0
    capsys.readouterr()
    monkeypatch.setenv(pipeline.CORRUPT, "1")
    assert pipeline.main(["--corrupt"]) == 0
    out = capsys.readouterr().out
    assert "1 failed a check, 25 blocked" in out  # the 24 days and the report
    assert "warehouse/cleaned is failed-check" in out
    assert "check ids_unique failed (blocking)" in out
    assert "duplicates=1" in out


@pytest.mark.slow
def test_the_example_runs_as_a_script(flowcore_home: Path) -> None:
    env = {**os.environ, "FLOWCORE_HOME": str(flowcore_home), "NO_COLOR": "1"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "materialized 27 assets and partitions" in proc.stdout
    assert "$ flowcore assets lineage report" in proc.stdout
