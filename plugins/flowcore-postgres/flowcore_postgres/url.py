"""What a ``postgresql://`` URL says: where the server is, and flowcore's own options.

The URL is libpq's (asyncpg reads it), plus options of the store, taken out before the
URL reaches asyncpg (which would send an unknown parameter to the server as a setting,
and the server would refuse it):

- ``schema=NAME``: the PostgreSQL schema holding flowcore's tables (default ``flowcore``),
  so flowcore never mixes its tables with an application's in ``public``, and several
  stores (one per team, per test) can share a database;
- ``blobs=/shared/folder``: keep large results as files in that folder (which every host
  must see) instead of in the ``blobs`` table.

``location`` (for messages, ``flowcore runs ls``' headers, errors) is the URL without its
password: messages get logged and pasted into issues.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from flowcore.errors import ConfigurationError

__all__ = ["DEFAULT_SCHEMA", "SCHEMES", "StoreURL", "parse_url", "redact"]

#: URL schemes this store answers to (the ``flowcore.stores`` entry points).
SCHEMES: Final = ("postgresql", "postgres")
#: The schema of flowcore's tables when the URL names none.
DEFAULT_SCHEMA: Final = "flowcore"
#: PostgreSQL truncates identifiers past 63 bytes, which would merge two schemas' names.
_MAX_IDENTIFIER: Final = 63


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A parsed store URL: ``dsn`` for asyncpg, and the store's own options."""

    dsn: str
    schema: str
    blobs: Path | None
    location: str


def parse_url(url: str) -> StoreURL:
    """Split ``url`` into what asyncpg takes and what the store takes; errors name the fix."""
    if not isinstance(url, str):
        raise ConfigurationError(f"a PostgreSQL store URL must be a string, got {type(url)!r}")
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ConfigurationError(
            f"{redact(url)!r} is not a PostgreSQL URL; write it as "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in ("schema", "blobs")}
    theirs = [(k, v) for k, v in query if k not in ("schema", "blobs")]
    schema = ours.get("schema", DEFAULT_SCHEMA)
    check_schema(schema)
    blobs = ours.get("blobs")
    if blobs is not None and not blobs:
        raise ConfigurationError(
            "`blobs=` in the store URL needs a folder, e.g. blobs=/mnt/results"
        )
    dsn = urlunsplit(parts._replace(query=urlencode(theirs)))
    return StoreURL(
        dsn=dsn,
        schema=schema,
        blobs=Path(blobs).expanduser() if blobs else None,
        location=redact(url),
    )


def check_schema(schema: str) -> None:
    """A schema name flowcore can quote safely, or a ``ConfigurationError`` saying why not."""
    if not schema or "\x00" in schema or len(schema.encode()) > _MAX_IDENTIFIER:
        raise ConfigurationError(
            f"schema {schema!r} in the store URL is not a usable PostgreSQL schema name: it "
            f"must be 1 to {_MAX_IDENTIFIER} bytes with no NUL character"
        )
    if schema.startswith("pg_") or schema == "information_schema":
        raise ConfigurationError(
            f"schema {schema!r} is reserved by PostgreSQL; name another (e.g. schema=flowcore)"
        )


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (in the userinfo and in the query)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<an unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}{':***' if sep else ''}@{hostport}"
    query = [
        (k, "***" if k == "password" else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="/")))


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (``"my-schema"``)."""
    return '"' + name.replace('"', '""') + '"'
