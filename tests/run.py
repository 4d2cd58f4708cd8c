"""Run the whole test suite: ``python3 tests/run.py [pytest options]``.

On a fresh machine it first creates ``.venv`` and installs flowcore with its
test tools (see ``.ci/bootstrap.py``); extra arguments go to pytest.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / ".ci"))
import bootstrap

bootstrap.ensure_venv(extras="dev")

import pytest  # noqa: E402

sys.exit(pytest.main(["-p", "no:cacheprovider", str(bootstrap.ROOT / "tests"), *sys.argv[1:]]))
