"""Run the whole test suite: ``python3 tests/run.py [pytest options]``.

On a fresh machine it first creates ``.venv`` and installs flowcore with its
test tools (see ``.ci/bootstrap.py``); extra arguments go to pytest. Tests run
in 4 worker processes (pytest-xdist: most of a test's time is waiting, so more
workers than cores pays); ``-n 0`` runs them in this process (for ``--pdb``),
and ``-m "not slow"`` leaves out those that start other processes.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / ".ci"))
import bootstrap  # type: ignore[import-not-found]  # .ci/ is on sys.path at run time only

bootstrap.ensure_venv(extras="dev")

import pytest  # noqa: E402

args = sys.argv[1:]
workers = (
    [] if any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in args) else ["-n", "4"]
)
# The core's tests, then each plugin's (plugins/*/tests).
paths = [bootstrap.ROOT / "tests", *sorted(bootstrap.ROOT.glob("plugins/*/tests"))]
sys.exit(pytest.main(["-p", "no:cacheprovider", *workers, *map(str, paths), *args]))
