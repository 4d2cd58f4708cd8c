"""Every error flowcore raises, under one root.

The tree::

    FlowcoreError
    ├── ConfigurationError (ValueError)      bad decorator option, bad setting, bad call
    ├── NonRetryable                          raised by user code: stop retrying this task now
    ├── TaskTimeout (TimeoutError)            a task attempt ran past its ``timeout``
    ├── FlowTimeout (TimeoutError)            a flow run ran past its ``timeout``
    ├── UpstreamFailed                        a task was not run because an input future failed
    ├── RunNotFound (LookupError)             no run with that id in the store
    ├── UnsupportedBackend (RuntimeError)     e.g. the SQLite store on trio
    └── StoreError (RuntimeError)
        ├── StoreCorrupted                    the database file is not a readable flowcore database
        ├── SchemaTooNew                      the database was written by a newer flowcore
        └── StoreUnavailable                  cannot open or write the database (permissions, disk)

Messages say what was wrong, what was given, and the fix.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "FlowTimeout",
    "FlowcoreError",
    "NonRetryable",
    "RunNotFound",
    "SchemaTooNew",
    "StoreCorrupted",
    "StoreError",
    "StoreUnavailable",
    "TaskTimeout",
    "UnsupportedBackend",
    "UpstreamFailed",
]


class FlowcoreError(Exception):
    """Root of every exception flowcore raises on its own behalf."""


class ConfigurationError(FlowcoreError, ValueError):
    """An option, setting or call is invalid; the message names it and the fix."""


class NonRetryable(FlowcoreError):
    """Raise this (or a subclass) from a task to fail it at once, whatever its retry policy.

    Use it for errors that another attempt cannot fix (bad input, a 404)::

        raise flowcore.NonRetryable(f"record {id} does not exist") from exc
    """


class TaskTimeout(FlowcoreError, TimeoutError):
    """A task attempt ran longer than the task's ``timeout``."""


class FlowTimeout(FlowcoreError, TimeoutError):
    """A flow run ran longer than the flow's ``timeout``."""


class UpstreamFailed(FlowcoreError):
    """A task was not run because a future passed to it as an input failed."""


class RunNotFound(FlowcoreError, LookupError):
    """No flow run matches the given id (or id prefix)."""


class UnsupportedBackend(FlowcoreError, RuntimeError):
    """The async library in use cannot run this part of flowcore."""


class StoreError(FlowcoreError, RuntimeError):
    """The state store failed; nothing already recorded is removed by flowcore."""


class StoreCorrupted(StoreError):
    """The database file exists but is not a readable flowcore database."""


class SchemaTooNew(StoreError):
    """The database was written by a newer flowcore whose schema this version cannot read."""


class StoreUnavailable(StoreError):
    """The database cannot be opened or written (a permission, path or disk problem)."""
