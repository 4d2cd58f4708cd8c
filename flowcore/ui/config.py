"""What ``flowcore ui`` was started with, and the rule on where it may listen."""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigurationError

__all__ = ["UIConfig", "check_bind", "is_loopback"]


@dataclass(frozen=True)
class UIConfig:
    """The UI's settings. ``home`` is the folder of the database (``None``:
    ``$FLOWCORE_HOME``). ``secret`` signs the CSRF token and the login cookie: a new one
    per process, so a restart logs everyone out and old forms are refused."""

    home: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8765
    allow_actions: bool = False
    token: str | None = None
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    #: Host names the server answers to; ``None``: the loopback names when bound to
    #: loopback (a defence against DNS rebinding), any when bound beyond it (the token
    #: guards it then).
    allowed_hosts: tuple[str, ...] | None = None
    #: Files defining the assets (``-f``, ``$FLOWCORE_ASSETS``): what the materialise and
    #: backfill actions give ``flowcore assets materialize`` (the UI never imports them).
    asset_files: tuple[Path, ...] = ()

    def hosts(self) -> tuple[str, ...] | None:
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        if is_loopback(self.host):
            return ("127.0.0.1", "localhost", "::1", "[::1]")
        return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only listens on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(config: UIConfig) -> None:
    """Refuse to listen beyond loopback without a token: the store holds parameters, logs
    and errors, and with ``--allow-actions`` the UI starts runs."""
    if not is_loopback(config.host) and not config.token:
        raise ConfigurationError(
            f"refusing to serve the UI on {config.host!r} without a token: anyone who can "
            "reach that address could read every run. Give --token TOKEN (a long random "
            "string; people log in with it, scripts send `Authorization: Bearer TOKEN`), "
            "or bind to 127.0.0.1"
        )
    if config.token is not None and len(config.token) < 16:
        raise ConfigurationError(
            "--token is too short to guard the UI: give at least 16 characters, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
