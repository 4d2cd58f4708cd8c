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
    return home
