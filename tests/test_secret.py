"""``flowcore.Secret``: a value passed to tasks and flows, never recorded, shown or pickled."""

from __future__ import annotations

import copy
import json
import pickle
import re
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import flowcore
from flowcore import ConfigurationError
from flowcore.cache import CachePolicy, KeyMaker
from flowcore.cli import cli
from flowcore.encoding import decode_inputs, encode_inputs
from flowcore.secret import Secret
from flowcore.views.format import short_value
from flowcore.views.trace import read_trace

TOKEN = "hunter2-s3cr3t-t0ken"
SEEN: list[str] = []


@pytest.fixture(autouse=True)
def _reset_seen() -> None:
    SEEN.clear()


# -- the value -----------------------------------------------------------------------------


def test_get_returns_the_value_and_nothing_else_shows_it() -> None:
    secret: Secret[str] = Secret(TOKEN)
    value: str = secret.get()  # typed: Secret[str].get() is a str
    assert value == TOKEN
    for shown in (repr(secret), str(secret), f"{secret}", repr([secret]), repr({"k": secret})):
        assert TOKEN not in shown and "Secret('****')" in shown
    assert Secret[int](3).get() == 3


def test_equal_and_hashed_by_value() -> None:
    assert Secret(TOKEN) == Secret(TOKEN) and hash(Secret(TOKEN)) == hash(Secret(TOKEN))
    assert Secret(TOKEN) != Secret("other") and Secret(b"k") == Secret(b"k")
    assert Secret(TOKEN) != TOKEN  # a secret is not its value
    assert Secret("ünï") == Secret("ünï") and Secret([1, 2]) == Secret([1, 2])
    assert len({Secret("a"), Secret("a"), Secret("b")}) == 2


def test_not_picklable_but_copyable() -> None:
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="cannot be pickled") as caught:
            pickle.dumps(Secret(TOKEN), protocol=protocol)
        assert TOKEN not in str(caught.value)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps({"inside": [Secret(TOKEN)]})
    shallow, deep = copy.copy(Secret([TOKEN])), copy.deepcopy(Secret([TOKEN]))
    assert shallow == deep == Secret([TOKEN])


def test_recorded_as_a_placeholder() -> None:
    data = encode_inputs(["url", "token"], ("https://x", Secret(TOKEN)), {"more": [Secret(1)]})
    assert TOKEN.encode() not in data
    recorded = decode_inputs(data)
    assert recorded["url"] == "https://x"
    assert recorded["token"]["__flowcore__"] == "secret"
    assert recorded["more"][0]["__flowcore__"] == "secret"
    assert short_value(recorded["token"]) == "<secret>"


def test_the_cache_key_part_is_a_digest_of_the_value() -> None:
    part = Secret(TOKEN).__flowcore_cache_key__()
    assert TOKEN not in json.dumps(part)
    assert part == Secret(TOKEN).__flowcore_cache_key__()
    assert part != Secret(TOKEN + "!").__flowcore_cache_key__()
    assert Secret({"b": 1, "a": 2}).__flowcore_cache_key__() == (
        Secret({"a": 2, "b": 1}).__flowcore_cache_key__()  # canonical: key order is no matter
    )
    with pytest.raises(TypeError, match="a Secret holding a object has no stable encoding"):
        Secret(object()).__flowcore_cache_key__()


# -- in runs ----------------------------------------------------------------------------------


@flowcore.task
async def use(url: str, token: Secret[str]) -> int:
    SEEN.append(token.get())
    return len(token.get())


@flowcore.task(cache=True)
async def cached_use(token: Secret[str]) -> str:
    SEEN.append(token.get())
    return token.get().upper()


@flowcore.flow
async def login(user: str, password: Secret[str]) -> int:
    return await use("https://api", password) + await use("https://api", Secret(TOKEN))


@flowcore.flow
async def fails_after_login(password: Secret[str]) -> int:
    await use("https://api", password)
    raise RuntimeError("later")


def files_hold(home: Path, text: str) -> list[Path]:
    """The files under ``home`` (the database, its WAL, result files) holding ``text``."""
    return [p for p in home.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


@pytest.mark.anyio
async def test_never_reaches_the_store_or_a_span(flowcore_home: Path) -> None:
    tracing = flowcore.Tracing(parameters=True)
    async with flowcore.Engine(tracing=tracing) as engine:
        assert await login("ann", Secret(TOKEN)) == 2 * len(TOKEN)
        assert engine.last_run is not None
        run_id = engine.last_run.id
        await engine.recorder.flush()
        run = await engine.store.get_run(run_id)
        task_runs = await engine.store.list_task_runs(run_id)
        spans = await read_trace(engine.store, run_id)
    assert SEEN == [TOKEN, TOKEN]  # the tasks got the value
    assert decode_inputs(run.parameters)["password"]["__flowcore__"] == "secret"
    assert all(decode_inputs(t.inputs)["token"]["__flowcore__"] == "secret" for t in task_runs)
    flow_span = next(s for s in spans if s.name == "flow login")
    assert flow_span.attributes["flowcore.parameter.password"] == "Secret('****')"
    assert flow_span.attributes["flowcore.parameter.user"] == "'ann'"
    assert not any(TOKEN in repr(s) for s in spans)
    assert files_hold(flowcore_home, TOKEN) == []


@pytest.mark.anyio
async def test_a_cached_task_never_shares_an_entry_between_secrets(flowcore_home: Path) -> None:
    """Different secrets never hit each other's entry, and the store holds no secret.

    A Secret argument is keyed by a digest of it (``__flowcore_cache_key__``): equal
    secrets hit, different ones compute.
    """
    KeyMaker(cached_use.fn, "cached_use", CachePolicy()).key((Secret("a"),), {})  # no error
    outcomes: list[str] = []
    async with flowcore.Engine():
        for value in ("first-" + TOKEN, "second-" + TOKEN, "first-" + TOKEN):
            outcomes.append(await cached_use(Secret(value)))
    first, second = "FIRST-" + TOKEN.upper(), "SECOND-" + TOKEN.upper()
    assert outcomes == [first, second, first]
    assert SEEN == ["first-" + TOKEN, "second-" + TOKEN]  # the third call hit
    assert files_hold(flowcore_home, TOKEN) == []  # (the results, upper case, are stored)


@pytest.mark.anyio
async def test_a_run_whose_parameters_held_a_secret_is_not_resumed() -> None:
    async with flowcore.Engine() as engine:
        with pytest.raises(RuntimeError, match="later"):
            await fails_after_login(Secret(TOKEN))
        assert engine.last_run is not None
        failed = engine.last_run.id
        SEEN.clear()
        with pytest.raises(ConfigurationError) as caught:
            await flowcore.resume_async(failed)
    message = str(caught.value)
    assert "'password'" in message and "flowcore.Secret" in message
    assert re.search(r"(run|call) the flow again", message)
    assert SEEN == []  # refused before running anything


# -- on the command line ----------------------------------------------------------------------

CLI_FLOWS = """
import flowcore
from flowcore.secret import Secret

@flowcore.task
async def use(token: Secret[str]) -> int:
    return len(token.get())

@flowcore.flow
async def login(user: str, token: Secret[str], pin: Secret[int] = Secret(0)) -> str:
    assert isinstance(token, Secret) and isinstance(pin, Secret)
    return f"{user}:{await use(token)}:{type(pin.get()).__name__}"
"""


def test_a_secret_parameter_is_wrapped_from_the_command_line(
    tmp_path: Path, flowcore_home: Path
) -> None:
    path = tmp_path / "secret_flows.py"
    path.write_text(textwrap.dedent(CLI_FLOWS))
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["run", f"{path}:login", "-p", "user=ann", "-p", f"token={TOKEN}", "-p", "pin=1234"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"'ann:{len(TOKEN)}:int'"
    run_id = re.search(r"flowcore runs show ([0-9a-f]{8})", result.stderr)
    assert run_id is not None
    shown = runner.invoke(cli, ["runs", "show", run_id.group(1)], catch_exceptions=False)
    assert "token=<secret>" in shown.stdout and "pin=<secret>" in shown.stdout
    assert TOKEN not in shown.stdout
    data = runner.invoke(cli, ["runs", "show", run_id.group(1), "--json"]).stdout
    assert TOKEN not in data and json.loads(data)["parameters"]["token"]["__flowcore__"] == "secret"
    assert files_hold(flowcore_home, TOKEN) == []
    bad = runner.invoke(
        cli, ["run", f"{path}:login", "-p", "user=ann", "-p", "token=x", "-p", "pin=12ab34"]
    )
    assert bad.exit_code == 1
    assert "pin: Expected `int`, got `str` - at `$.pin` (a secret: the value is not shown)" in (
        bad.stderr
    )
    assert "12ab34" not in bad.output
