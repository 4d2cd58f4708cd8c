"""Set-up for the README's commands on a fresh machine with only Python 3.11+.

``ensure_venv()`` makes sure the current script runs inside the project's
``.venv`` with flowcore (and, for tests, the dev tools) installed: it creates
the virtual environment if needed, installs the project in editable mode when
``pyproject.toml`` changed since the last install, then re-executes the script
with the venv's Python. Inside the venv it returns at once.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("FLOWCORE_VENV", ROOT / ".venv"))


def _venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv(extras: str = "ui") -> None:
    """See the module's docstring. ``extras``: what to install with flowcore; by default
    the web UI's (``flowcore ui`` works after the README's first command), ``dev`` for
    the tests (which holds the UI's too)."""
    if sys.version_info < (3, 11):
        sys.exit(f"flowcore needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if Path(sys.prefix).resolve() == VENV.resolve():
        return  # already running inside the project's venv (after the re-exec below)
    python = _venv_python()
    if not python.exists():
        print(f"setting up {VENV} (first run only) ...", file=sys.stderr, flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    spec = f".[{extras}]" if extras else "."
    # The tests also cover the plugins (plugins/*/, each its own distribution).
    plugins = _plugins() if extras == "dev" else []
    stamp = VENV / f".flowcore-installed{('-' + extras) if extras else ''}"
    digest = hashlib.sha256(b"".join(t.read_bytes() for t in _stamp_inputs(plugins))).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        print(
            f"installing flowcore{f' [{extras}]' if extras else ''} into {VENV} ...",
            file=sys.stderr,
            flush=True,
        )
        cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", spec]
        for plugin in plugins:
            cmd += ["-e", plugin]
        result = subprocess.run(cmd, cwd=ROOT)
        if result.returncode != 0:
            sys.exit(
                f"installing flowcore failed (exit {result.returncode}); "
                f"the command was: {' '.join(cmd)}"
            )
        stamp.write_text(digest)
    os.execv(str(python), [str(python), *sys.argv])


def _plugins() -> list[str]:
    """Each plugin folder as pip takes it, with its ``dev`` extra when it has one."""
    found = []
    for toml in sorted(ROOT.glob("plugins/*/pyproject.toml")):
        folder = toml.parent.relative_to(ROOT).as_posix()
        extras = tomllib.loads(toml.read_text()).get("project", {}).get("optional-dependencies", {})
        found.append(f"{folder}[dev]" if "dev" in extras else folder)
    return found


def _stamp_inputs(plugins: list[str]) -> list[Path]:
    """The files whose change means installing again: the project's and each plugin's
    ``pyproject.toml`` (``plugins`` as :func:`_plugins` gives them, extras included)."""
    return [
        ROOT / "pyproject.toml",
        *(ROOT / p.partition("[")[0] / "pyproject.toml" for p in plugins),
    ]
