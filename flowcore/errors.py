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
    ├── CacheKeyError (TypeError)             a cache key cannot be computed for a call
    ├── ResultNotSerializable (TypeError)     a task's result cannot be stored by its serializer
    ├── ResultUnreadable                      a stored result is corrupt, unknown or refused
    │   ├── ResultNotStored                   the task run has no stored result
    │   └── PickleNotAllowed                  a pickled result, and allow_pickle was not given
    ├── StoreError (RuntimeError)
    │   ├── StoreCorrupted                    the database file is not a readable flowcore database
    │   ├── SchemaTooNew                      the database was written by a newer flowcore
    │   └── StoreUnavailable                  cannot open or write the database (permissions, disk)
    └── (ConfigurationError)
        ├── FlowLoadError                     a flow named by FILE.py:FLOW could not be loaded
        └── ParameterError                    a flow's parameters do not fit its signature

Messages say what was wrong, what was given, and the fix. A spelling that was
renamed keeps working for one release with a :class:`FlowcoreDeprecationWarning`
naming the new one.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

__all__ = [
    "CacheKeyError",
    "ConfigurationError",
    "FlowLoadError",
    "FlowTimeout",
    "FlowcoreDeprecationWarning",
    "FlowcoreError",
    "NonRetryable",
    "ParameterError",
    "PickleNotAllowed",
    "ResultNotSerializable",
    "ResultNotStored",
    "ResultUnreadable",
    "RunNotFound",
    "SchemaTooNew",
    "StoreCorrupted",
    "StoreError",
    "StoreUnavailable",
    "TaskTimeout",
    "UnsupportedBackend",
    "UpstreamFailed",
    "deprecated",
]


class FlowcoreError(Exception):
    """Root of every exception flowcore raises on its own behalf."""


class ConfigurationError(FlowcoreError, ValueError):
    """An option, setting or call is invalid; the message names it and the fix."""


class FlowLoadError(ConfigurationError):
    """The flow named by ``FILE.py:FLOW`` could not be loaded; the message says why.

    ``cause`` is the exception the user's module raised while being imported,
    if that was the problem (the CLI shows its traceback on request).
    """

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class ParameterError(ConfigurationError):
    """A flow was given parameters that do not fit its signature: values that its
    annotations refuse, missing ones, unknown ones. Every problem is in the message at
    once, and in ``problems`` (parameter name, or ``*`` for extra positional
    arguments, to what is wrong with it). Nothing is reset to a default or dropped:
    the run is recorded Failed with this error, with the parameters as they were given.
    """

    def __init__(self, message: str, problems: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.problems: dict[str, str] = dict(problems or {})

    def __reduce__(self) -> tuple[type[ParameterError], tuple[str, dict[str, str]]]:
        return type(self), (str(self.args[0]), self.problems)


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


class CacheKeyError(FlowcoreError, TypeError):
    """A cache key cannot be computed for a call (an argument cannot be encoded)."""


class ResultNotSerializable(FlowcoreError, TypeError):
    """A task's result cannot be stored with the task's serializer."""


class ResultUnreadable(FlowcoreError):
    """A stored result is corrupt, truncated, of an unknown format, or not allowed to load.

    The engine treats it as a cache miss (with a warning): it never fails a flow.
    """


class ResultNotStored(ResultUnreadable):
    """The task run has no stored result: it did not complete, or its value was not kept.

    A subclass of :class:`ResultUnreadable`, so code that only wants "the value,
    or why not" catches that one class.
    """


class PickleNotAllowed(ResultUnreadable):
    """The stored result is a pickle and the reader did not pass ``allow_pickle=True``."""


class FlowcoreDeprecationWarning(FutureWarning):
    """A spelling that still works but will be removed; the message names the new one.

    A ``FutureWarning`` (shown by default), because the people who must act on it
    are the ones writing flows, not only the authors of libraries.
    """


def deprecated(old: str, new: str, *, stacklevel: int) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (``stacklevel`` as for ``warn``)."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; write {new}",
        FlowcoreDeprecationWarning,
        stacklevel=stacklevel + 1,
    )


# The public spelling in tracebacks, pickles and recorded error types: `flowcore.X`.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = "flowcore"
del _name, _obj
