from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # The SQLite store is asyncio-only (aiosqlite); trio is tested explicitly where it applies.
    return "asyncio"


@pytest.fixture(autouse=True)
def flowcore_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own FLOWCORE_HOME, so no test touches ~/.flowcore."""
    home = tmp_path / "flowcore-home"
    monkeypatch.setenv("FLOWCORE_HOME", str(home))
    monkeypatch.delenv("FLOWCORE_DB_URL", raising=False)  # would win over FLOWCORE_HOME
    return home


@pytest.fixture(autouse=True)
def fixed_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rendered tables and trees have one width whatever terminal runs the tests.

    rich sizes its output from ``$COLUMNS`` when it is not writing to a terminal
    (80 when unset), so a developer's narrow or wide terminal would otherwise
    change what a command prints, and which columns it truncates.
    """
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.setenv("LINES", "50")
    monkeypatch.delenv("NO_COLOR", raising=False)
