"""The set-up the README's commands run (``.ci/bootstrap.py``) finds the plugins."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / ".ci"))
import bootstrap  # type: ignore[import-not-found]  # noqa: E402  # .ci/ is not a package


def test_every_plugin_is_installed_with_its_dev_extra_and_stamped() -> None:
    plugins = bootstrap._plugins()
    folders = sorted(p.parent.name for p in ROOT.glob("plugins/*/pyproject.toml"))
    assert [p.partition("[")[0].removeprefix("plugins/") for p in plugins] == folders
    assert "plugins/flowcore-postgres[dev]" in plugins
    inputs = bootstrap._stamp_inputs(plugins)
    assert all(path.is_file() for path in inputs), inputs
    assert len(inputs) == len(plugins) + 1
