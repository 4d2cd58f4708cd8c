"""``flowcore ui``: serve the web UI over the store (read-only unless ``--allow-actions``).

The UI comes with an extra (``pip install 'flowcore[ui]'``): without it, the command says
what to install instead of failing on an import.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..errors import ConfigurationError
from .support import CliError

try:
    from ..ui.app import serve
    from ..ui.config import UIConfig, check_bind
except ImportError as exc:  # the `ui` extra is not installed
    if exc.name not in {"starlette", "uvicorn", "jinja2", "markupsafe"}:
        raise
    MISSING: str | None = exc.name
else:
    MISSING = None

__all__ = ["ui_command"]

#: Where `flowcore assets` looks for the assets' files when no -f is given.
ASSETS_ENV = "FLOWCORE_ASSETS"


@click.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=8765, show_default=True,
    help="Port to listen on.",
)  # fmt: skip
@click.option(
    "--home", type=click.Path(file_okay=False, path_type=Path),
    help="Folder of the run database (overrides $FLOWCORE_HOME).",
)  # fmt: skip
@click.option(
    "--allow-actions", is_flag=True,
    help="Let the UI trigger flows, resume runs, pause schedules and materialise assets "
    "(off: read-only).",
)  # fmt: skip
@click.option(
    "--token", envvar="FLOWCORE_UI_TOKEN", metavar="TOKEN",
    help="Required to open the UI (log in with it, or send `Authorization: Bearer TOKEN`); "
    "needed to listen beyond loopback. Also read from $FLOWCORE_UI_TOKEN.",
)  # fmt: skip
@click.option(
    "-f", "--file", "files", multiple=True, metavar="FILE.py",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file defining assets (repeatable; default $FLOWCORE_ASSETS): with "
    "--allow-actions, what materialising and backfilling from the UI run (as "
    "`flowcore assets materialize -f FILE.py`, a process of its own).",
)  # fmt: skip
def ui_command(
    host: str,
    port: int,
    home: Path | None,
    allow_actions: bool,
    token: str | None,
    files: tuple[Path, ...],
) -> None:
    """Serve a web UI over the store: runs, their task graphs, timelines, traces and logs;
    served flows, schedules and limits; assets, their lineage and partitions. Read-only
    unless --allow-actions.

    \b
    flowcore ui                               # http://127.0.0.1:8765/
    flowcore ui --allow-actions -f assets.py
    flowcore ui --host 0.0.0.0 --token "$(openssl rand -hex 32)"
    """
    if MISSING is not None:
        raise CliError(
            f"the web UI needs the `ui` extra ({MISSING} is not installed): "
            "pip install 'flowcore[ui]'"
        )
    if home is None and os.environ.get("FLOWCORE_HOME"):
        home = Path(os.environ["FLOWCORE_HOME"])
    if not files:
        env = os.environ.get(ASSETS_ENV, "")
        files = tuple(Path(p) for p in env.split(os.pathsep) if p.strip())
    for path in files:
        if not path.is_file():
            raise CliError(f"--file {path}: no such file (a Python file defining assets)")
    config = UIConfig(
        home=home,
        host=host,
        port=port,
        allow_actions=allow_actions,
        token=token,
        asset_files=tuple(path.resolve() for path in files),
    )
    try:
        check_bind(config)
    except ConfigurationError as exc:
        raise CliError(str(exc)) from exc
    where = f"[{host}]" if ":" in host else host
    click.echo(
        f"flowcore UI on http://{where}:{port}/ "
        f"({'actions allowed' if allow_actions else 'read-only'}); Ctrl-C stops it",
        err=True,
    )
    serve(config)
