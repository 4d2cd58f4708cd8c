"""The examples in flowcore's docstrings run, and print what they say.

Every ``>>>`` example of every module is run, with ``flowcore`` imported, so an
example that drifts from the API (a renamed method, a changed default) fails here.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import flowcore

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(flowcore.__path__, prefix="flowcore.")
    if not m.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(
        module,
        extraglobs={"flowcore": flowcore},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        report=False,
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"


def test_the_public_classes_have_examples() -> None:
    # The value objects people configure are the ones whose examples matter most.
    finder = doctest.DocTestFinder()
    for obj in (flowcore.RetryPolicy, flowcore.Backoff, flowcore.CachePolicy, flowcore.Limit):
        examples = [t for t in finder.find(obj) if t.examples]
        assert examples, f"{obj.__qualname__} has no docstring example"
