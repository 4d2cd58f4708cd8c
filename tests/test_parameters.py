"""Flow parameters: the type hints are the schema, every entry point checks them the same
way, and parameters that do not fit make a run recorded Failed, never a silent change."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import re
import textwrap
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Generic, Literal, NewType, Protocol, TypeVar

import msgspec
import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st

import flowcore
from flowcore import ConfigurationError, State
from flowcore.cli import cli
from flowcore.encoding import decode_inputs
from flowcore.errors import ParameterError
from flowcore.secret import Secret

pytestmark = pytest.mark.anyio


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Window:
    start: datetime.date
    days: int


class Item(msgspec.Struct):
    sku: str
    qty: int
    window: Window | None = None


@flowcore.flow
async def typed(
    pages: int,
    ratio: float,
    dry_run: bool,
    when: datetime.datetime,
    color: Color,
    window: Window,
    items: list[Item],
    note: str = "none",
) -> dict[str, Any]:
    return {
        "pages": pages,
        "ratio": ratio,
        "dry_run": dry_run,
        "when": when,
        "color": color,
        "window": window,
        "items": items,
        "note": note,
    }


GIVEN_AS_TEXT: dict[str, Any] = {
    "pages": "3",
    "ratio": "0.5",
    "dry_run": "true",
    "when": "2024-03-01T12:00:00Z",
    "color": "blue",
    "window": {"start": "2024-03-01", "days": "7"},
    "items": [{"sku": "a", "qty": "2", "window": {"start": "2024-03-02", "days": 1}}],
}
EXPECTED: dict[str, Any] = {
    "pages": 3,
    "ratio": 0.5,
    "dry_run": True,
    "when": datetime.datetime(2024, 3, 1, 12, tzinfo=datetime.UTC),
    "color": Color.BLUE,
    "window": Window(datetime.date(2024, 3, 1), 7),
    "items": [Item("a", 2, Window(datetime.date(2024, 3, 2), 1))],
    "note": "none",
}


def loose(flow: flowcore.Flow[Any, Any]) -> Any:
    """``flow``, for calls with values its annotations refuse (which the type checker would)."""
    return flow


async def recorded(engine: flowcore.Engine, run_id: str | None = None) -> flowcore.FlowRunRecord:
    """The last run (or ``run_id``) as the store has it."""
    if run_id is None:
        assert engine.last_run is not None
        run_id = engine.last_run.id
    await engine.recorder.flush()
    return await engine.store.get_run(run_id)


# -- conversion, from each Python entry point -----------------------------------------------


async def test_a_call_converts_every_parameter_by_its_annotation() -> None:
    async with flowcore.Engine() as engine:
        assert await typed(**GIVEN_AS_TEXT) == EXPECTED
        run = await recorded(engine)
    assert run.state is State.COMPLETED
    # Recorded as the flow received them, the default included.
    parameters = decode_inputs(run.parameters)
    assert parameters["pages"] == 3 and parameters["dry_run"] is True
    assert parameters["note"] == "none"


def test_flowcore_run_converts_the_same_way() -> None:
    assert flowcore.run(typed, **GIVEN_AS_TEXT) == EXPECTED
    assert typed.run(**GIVEN_AS_TEXT) == EXPECTED


async def test_positional_arguments_are_converted_too() -> None:
    async with flowcore.Engine("memory"):
        result = await typed(*GIVEN_AS_TEXT.values())
    assert result == EXPECTED


@flowcore.flow
async def parent_converts() -> dict[str, Any]:
    return await typed(**GIVEN_AS_TEXT)


async def test_a_subflow_call_converts_the_same_way() -> None:
    async with flowcore.Engine("memory"):
        assert await parent_converts() == EXPECTED


@flowcore.flow
async def echo(x: Any, y=None, *rest: int, **more: float) -> Any:  # type: ignore[no-untyped-def]
    return x, y, rest, more


async def test_unannotated_any_args_and_kwargs() -> None:
    async with flowcore.Engine("memory"):
        # Any and unannotated: as given; *rest: int and **more: float converted.
        assert await loose(echo)("1", "2", "3", "4", z="0.5") == ("1", "2", (3, 4), {"z": 0.5})
        with pytest.raises(ParameterError) as caught:
            await loose(echo)(1, 2, "x", z="y")
    assert caught.value.problems == {
        "rest": "Expected `int`, got `str` - at `$.rest[0]` (given ('x',))",
        "more": "Expected `float`, got `str` - at `$.more[...]` (given {'z': 'y'})",
    }


@flowcore.flow
async def paths(where: Path, base: PurePosixPath | None = None) -> tuple[Path, Any]:
    return where, base


async def test_a_path_is_made_from_its_text() -> None:
    async with flowcore.Engine("memory"):
        assert await paths("/tmp/x", "a/b") == (Path("/tmp/x"), PurePosixPath("a/b"))  # type: ignore[arg-type]


class Client:
    """A class of the application's own: msgspec cannot build it, so it is checked
    with isinstance, also inside a union."""


@flowcore.flow
async def with_client(client: Client, other: Client | int) -> int:
    return 1


async def test_a_class_of_its_own_is_checked_with_isinstance() -> None:
    async with flowcore.Engine("memory"):
        assert await with_client(Client(), 3) == 1
        with pytest.raises(ParameterError) as caught:
            await with_client("c", "d")  # type: ignore[arg-type]
    assert set(caught.value.problems) == {"client", "other"}
    assert caught.value.problems["other"].startswith("Expected `Client | int`, got `str`")


class Fetcher(Protocol):  # not runtime-checkable: no isinstance can check it
    def fetch(self) -> bytes: ...


T = TypeVar("T")
UserId = NewType("UserId", int)


class Box(Generic[T]):
    pass


@flowcore.flow
async def exotic(
    fetcher: Fetcher,
    box: Box[int],
    boxes: list[Box[int]],
    fn: Callable[[int], int],
    kind: type[Exception],
    mode: Literal["fast", "slow"],
    user: UserId,
    size: Annotated[int, msgspec.Meta(ge=1)],
    anything: T,
) -> tuple[Any, ...]:
    return fetcher, box, boxes, fn, kind, mode, user, size, anything


async def test_annotations_msgspec_cannot_build_are_checked_by_their_class() -> None:
    box, marker = Box[int](), object()
    async with flowcore.Engine("memory"):
        result = await loose(exotic)(marker, box, [box], abs, KeyError, "fast", "7", "2", marker)
        assert result == (marker, box, [box], abs, KeyError, "fast", 7, 2, marker)
        with pytest.raises(ParameterError) as caught:
            await loose(exotic)(marker, 1, [1], 2, int, "medium", "x", 0, marker)
    assert caught.value.problems == {
        "box": "Expected `Box[int]`, got `int` - at `$.box` (given 1)",
        "boxes": "Expected `Box[int]`, got `int` - at `$.boxes[0]` (expected `list[Box[int]]`; "
        "given [1])",
        "fn": "Expected `Callable[[...], int]`, got `int` - at `$.fn` (given 2)",
        "kind": "Expected `type[Exception]`, got `type` - at `$.kind` (given <class 'int'>)",
        "mode": "Invalid enum value 'medium' - at `$.mode` (expected `Literal['fast', 'slow']`; "
        "given 'medium')",
        "user": "Expected `int`, got `str` - at `$.user` (given 'x')",
        "size": "Expected `int` >= 1 - at `$.size` (given 0)",
    }


# -- the fast path: values that already fit are passed as they are --------------------------


async def test_values_that_fit_are_passed_as_the_same_objects() -> None:
    seen: dict[str, Any] = {}

    @flowcore.flow
    async def keep(window: Window, ids: list[int], item: Item, color: Color) -> None:
        seen.update(window=window, ids=ids, item=item, color=color)

    window, ids, item = Window(datetime.date(2024, 1, 1), 1), [1, 2, 3], Item("a", 1)
    async with flowcore.Engine("memory"):
        await keep(window, ids, item, Color.RED)
    assert seen["window"] is window and seen["item"] is item and seen["color"] is Color.RED
    assert seen["ids"] is ids  # converted to an equal list: the caller's own is kept


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.booleans())
def test_text_of_a_value_converts_to_that_value(number: int, flag: bool) -> None:
    # The conversion every entry point shares, without a run: round trips through text.
    values = typed.validate({**GIVEN_AS_TEXT, "pages": str(number), "dry_run": str(flag).lower()})
    assert values["pages"] == number and values["dry_run"] is flag


# -- what does not fit: one error listing everything, a run recorded Failed ------------------


async def test_every_bad_parameter_is_reported_at_once() -> None:
    async with flowcore.Engine() as engine:
        with pytest.raises(ParameterError) as caught:
            await loose(typed)(
                "many",
                ratio="half",
                dry_run="perhaps",
                when="tuesday",
                color="green",
                window={"start": "2024-03-01"},
                items=[{"sku": "a", "qty": 1}, {"sku": 2, "qty": 1}],
                colour="red",
            )
        run = await recorded(engine)
    error = caught.value
    assert isinstance(error, ConfigurationError) and isinstance(error, ValueError)
    assert error.problems == {
        "pages": "Expected `int`, got `str` - at `$.pages` (given 'many')",
        "ratio": "Expected `float`, got `str` - at `$.ratio` (given 'half')",
        "dry_run": "Expected `bool`, got `str` - at `$.dry_run` (given 'perhaps')",
        "when": "Invalid RFC3339 encoded datetime - at `$.when` (expected `datetime`; "
        "given 'tuesday')",
        "color": "Invalid enum value 'green' - at `$.color` (expected `Color`; given 'green')",
        "window": "Object missing required field `days` - at `$.window` (expected `Window`; "
        "given {'start': '2024-03-01'})",
        "items": "Expected `str`, got `int` - at `$.items[1].sku` (expected `list[Item]`; "
        "given [{'sku': 'a', 'qty': 1}, {'sku': 2, 'qty': 1}])",
        "colour": "unknown parameter (given 'red')",
    }
    message = str(error)
    assert message.startswith("flow 'typed' was given 8 invalid parameters:\n  pages: Expected")
    assert "its signature: typed(pages: int, ratio: float, dry_run: bool, when: datetime" in message
    # Recorded Failed with that error, the parameters as given (nothing reset or dropped).
    assert run.state is State.FAILED and run.name == "typed"
    assert run.error_type == "flowcore.ParameterError" and run.error_message == message
    parameters = decode_inputs(run.parameters)
    assert parameters["pages"] == "many" and parameters["colour"] == "red"
    assert parameters["note"] == "none"  # the default, recorded
    assert [entry[0] for entry in run.history] == ["Running", "Failed"]


async def test_missing_unknown_and_extra_arguments_are_listed() -> None:
    @flowcore.flow
    async def two(a: int, b: str, /, c: float = 1.0, *, d: bool) -> None: ...

    async with flowcore.Engine() as engine:
        with pytest.raises(ParameterError) as caught:
            await loose(two)(1, "b", 2.0, 4, 5, a=1, e=3)
        run = await recorded(engine)
    assert caught.value.problems == {
        "a": "positional-only, given by name (given 1)",
        "d": "missing (it has no default; expected `bool`)",
        "e": "unknown parameter (given 3)",
        "*": "bad arguments: 5 positional arguments given, the flow takes at most 3 "
        "(given (4, 5) beyond)",
    }
    assert decode_inputs(run.parameters) == {"a": 1, "b": "b", "c": 2.0, "e": 3, "*3": 4, "*4": 5}
    with pytest.raises(ParameterError, match="given twice: by position and by name"):
        await loose(typed)(3, pages=3)


async def test_refused_runs_are_never_retried_and_the_body_never_runs() -> None:
    calls: list[int] = []

    @flowcore.flow(retries=3)
    async def once(n: int) -> None:
        calls.append(n)

    async with flowcore.Engine() as engine:
        with pytest.raises(ParameterError):
            await once("x")  # type: ignore[arg-type]
        run = await recorded(engine)
    assert calls == [] and run.state is State.FAILED
    assert "Retrying" not in [entry[0] for entry in run.history]


def test_the_refused_run_is_listed_by_runs_ls() -> None:
    with pytest.raises(ParameterError):
        flowcore.run(loose(typed), pages="x")
    listed = cli_json("runs", "ls", "--state", "Failed", "--json")
    assert [(run["name"], run["state"]) for run in listed] == [("typed", "Failed")]


@flowcore.task
async def noop() -> int:
    return 1


@flowcore.flow
async def child(n: int) -> int:
    return n


@flowcore.flow
async def parent(n: str) -> int:
    await noop()
    return await child(n)  # type: ignore[arg-type]


@flowcore.flow
async def tolerant_parent() -> str:
    try:
        await child("x")  # type: ignore[arg-type]
    except ParameterError as exc:
        return f"caught {sorted(exc.problems)}"
    return "not caught"


async def test_a_subflow_with_invalid_parameters_fails_its_parent() -> None:
    async with flowcore.Engine() as engine:
        assert await parent("4") == 4  # converted for the subflow
        with pytest.raises(ParameterError, match="flow 'child' was given 1 invalid parameter"):
            await parent("four")
        failed = await recorded(engine)
        (sub,) = await engine.store.child_runs(failed.id)
        # The parent sees it as any failure: it may catch it.
        assert await tolerant_parent() == "caught ['n']"
    assert failed.state is State.FAILED and failed.error_type == "flowcore.ParameterError"
    assert sub.name == "child" and sub.state is State.FAILED
    assert sub.error_type == "flowcore.ParameterError"
    assert decode_inputs(sub.parameters) == {"n": "four"}


# -- opting out, secrets, the schema ---------------------------------------------------------


async def test_validate_parameters_false_passes_parameters_as_given() -> None:
    @flowcore.flow(validate_parameters=False)
    async def loose(n: int, window: Window | None = None) -> Any:
        return n, window

    async with flowcore.Engine("memory"):
        assert await loose("1", {"days": 1}) == ("1", {"days": 1})  # type: ignore[arg-type]
        with pytest.raises(ParameterError, match="unknown parameter"):
            await loose(1, m=2)  # type: ignore[call-arg]  # names are still checked
        strict = loose.with_options(validate_parameters=True)
        assert await strict("1") == (1, None)  # type: ignore[arg-type]
        assert loose.with_options(name="other").validate_parameters is False
    with pytest.raises(ConfigurationError, match="`validate_parameters` must be True or False"):
        flowcore.flow(validate_parameters="no")  # type: ignore[call-overload]


TOKEN = "s3cr3t-t0ken-value"


@flowcore.flow
async def login(token: Secret[str], pin: Secret[int] | None = None) -> str:
    assert isinstance(token, Secret)
    return f"{len(token.get())}:{None if pin is None else pin.get()!r}"


async def test_a_plain_value_for_a_secret_is_wrapped_and_never_recorded(
    flowcore_home: Path,
) -> None:
    given = Secret(TOKEN)
    async with flowcore.Engine() as engine:
        assert await login(TOKEN, "42") == f"{len(TOKEN)}:42"  # type: ignore[arg-type]
        assert await login(given) == f"{len(TOKEN)}:None"  # a Secret is taken as it is
        with pytest.raises(ParameterError) as caught:
            await login(TOKEN, TOKEN)  # type: ignore[arg-type]
        run = await recorded(engine)
    assert caught.value.problems == {
        "pin": "Expected `int`, got `str` - at `$.pin` (a secret: the value is not shown)"
    }
    assert TOKEN not in str(caught.value)
    assert decode_inputs(run.parameters)["pin"]["__flowcore__"] == "secret"
    assert files_holding(flowcore_home, TOKEN) == []


def files_holding(home: Path, text: str) -> list[Path]:
    """The files under ``home`` (the database, its WAL) holding ``text``."""
    return [p for p in home.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_validate_checks_a_mapping_without_running() -> None:
    assert typed.validate(GIVEN_AS_TEXT) == EXPECTED
    with pytest.raises(ParameterError) as caught:
        typed.validate({"pages": "x", "extra": 1})
    assert set(caught.value.problems) == {
        "pages", "ratio", "dry_run", "when", "color", "window", "items", "extra",
    }  # fmt: skip
    assert typed.parameter_types()["items"] == list[Item]

    # Positional-only parameters are named in a mapping; arguments() passes them back.
    @flowcore.flow
    async def pos(a: int, /, *rest: int, b: int = 0) -> None: ...

    values = pos.validate({"a": "1", "b": "2"})
    assert values == {"a": 1, "rest": (), "b": 2}
    assert pos.arguments(values) == ((1,), {"b": 2})


@flowcore.flow
async def late(w: Later) -> int:
    return w.n


@dataclasses.dataclass
class Later:  # defined after the flow that names it: resolved at the first call
    n: int


async def test_annotations_resolve_at_the_first_call() -> None:
    async with flowcore.Engine("memory"):
        assert await late({"n": "5"}) == 5  # type: ignore[arg-type]


async def test_an_annotation_that_does_not_resolve_takes_any_value() -> None:
    @dataclasses.dataclass
    class Local:
        n: int

    @flowcore.flow
    async def local(x: Local, y: int) -> Any:  # "Local" cannot be resolved from the module
        return x, y

    async with flowcore.Engine("memory"):
        assert await local({"n": 1}, "2") == ({"n": 1}, 2)  # type: ignore[arg-type]


# -- the command line ------------------------------------------------------------------------

CLI_FLOWS = """
import dataclasses
import flowcore

@dataclasses.dataclass
class Window:
    days: int
    label: str = "w"

@flowcore.flow
async def job(pages: int, window: Window, ids: list[int] = [], dry_run: bool = False) -> str:
    return f"{pages!r} {window!r} {ids!r} {dry_run!r}"
"""


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def cli_json(*args: str) -> Any:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def run_id_of(result: Result) -> str:
    match = re.search(r"flowcore runs show ([0-9a-f]{8})", result.stderr)
    assert match, result.output
    return match.group(1)


@pytest.fixture
def job_file(tmp_path: Path) -> str:
    path = tmp_path / "jobs.py"
    path.write_text(textwrap.dedent(CLI_FLOWS))
    return f"{path}:job"


def test_cli_param_values_are_converted(job_file: str) -> None:
    result = invoke("run", job_file, "-p", "pages=2", "-p", 'window={"days": "3"}', "-p", "ids=[1]")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "\"2 Window(days=3, label='w') [1] False\""
    shown = cli_json("runs", "show", run_id_of(result), "--json")
    # (msgspec leaves a dataclass's defaults on the class: the recorded one omits them.)
    assert shown["parameters"] == {
        "pages": 2, "window": {"days": 3}, "ids": [1], "dry_run": False,
    }  # fmt: skip


def test_cli_params_json_inline_and_from_a_file(job_file: str, tmp_path: Path) -> None:
    inline = invoke("run", job_file, "--params-json", '{"pages": "2", "window": {"days": 1}}')
    assert inline.exit_code == 0, inline.output
    assert inline.stdout.strip() == "\"2 Window(days=1, label='w') [] False\""
    params = tmp_path / "params.json"
    params.write_text('{"window": {"days": 4, "label": "x"}, "ids": ["5"]}')
    merged = invoke(
        "run", job_file, "--params-json", f"@{params}", "-p", "dry_run=true", "-p", "pages=1"
    )
    assert merged.exit_code == 0, merged.output
    assert merged.stdout.strip() == "\"1 Window(days=4, label='x') [5] True\""


def test_cli_params_json_mistakes_are_named(job_file: str, tmp_path: Path) -> None:
    for args, message in [
        (["--params-json", "[1]"], "--params-json: expected a JSON object of parameters, got list"),
        (["--params-json", "{pages"], "--params-json: not valid JSON"),
        (
            ["--params-json", f"@{tmp_path}/none.json"],
            f"--params-json @{tmp_path}/none.json: cannot read {tmp_path}/none.json",
        ),
        (
            ["--params-json", '{"pages": 1}', "-p", "pages=2"],
            "parameter 'pages' is given by --param and by --params-json; give it once",
        ),
    ]:
        result = invoke("run", job_file, *args)
        assert result.exit_code == 1
        assert f"error: {message}" in result.stderr, result.stderr
    assert invoke("runs", "ls", "--json").stdout.strip() in ("", "[]")  # nothing ran


def test_cli_invalid_parameters_make_a_failed_run(job_file: str) -> None:
    result = invoke(
        "run", job_file, "-p", "pages=lots", "-p", 'ids=[1, "x"]', "--params-json", '{"wndow": {}}'
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: flow 'job' was given 4 invalid parameters:\n")
    assert "  pages: Expected `int`, got `str` - at `$.pages` (given 'lots')\n" in result.stderr
    assert "  window: missing (it has no default; expected `Window`)\n" in result.stderr
    assert "  ids: Expected `int`, got `str` - at `$.ids[1]`" in result.stderr
    assert "  wndow: unknown parameter (given {})\n" in result.stderr
    assert "Traceback" not in result.output
    shown = cli_json("runs", "show", run_id_of(result), "--json")
    assert shown["state"] == "Failed" and shown["error_type"] == "flowcore.ParameterError"
    assert shown["parameters"] == {"pages": "lots", "ids": [1, "x"], "dry_run": False, "wndow": {}}
    listed = cli_json("runs", "ls", "--state", "Failed", "--json")
    assert [run["id"][:8] for run in listed] == [run_id_of(result)]
