"""Hostile input, front to back. Hypothesis drives every command and every route of the web view
with values at the edges of their types: the strategies are built from the commands' own parameter
declarations (each option's type, choices and flags, as Typer declares them) and from the training
options that `--where` and `--by` name. Every example must end with an exit code of
`bnrun.errors.ExitCode` (docs/cli.md's table), no traceback and at most one line on stderr for a
failure; a read command must leave the store's bytes as they were; a route must answer below 500.
The default run tries a few examples of each (seconds); the heavy group (`slow`) many more. The
examples Hypothesis found and shrank are kept below as explicit regression tests, as are the edges
named in the hostile-input acceptance list (ids past the store's range, DNS rebinding, the token)."""

from __future__ import annotations

import contextlib
import json
import shutil
import typing
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from typer.testing import CliRunner

from bnrun.analysis.grouping import PIVOT_FIELDS
from bnrun.cli import app
from bnrun.config import STORED_INT_MAX
from bnrun.errors import ExitCode
from bnrun.requests.parsing import CHOICES
from bnrun.store import EpochRecord, FinalMetrics, Store
from bnrun.web.access import access_for
from bnrun.web.app import create_app

runner = CliRunner()
EXIT_CODES = {int(code) for code in ExitCode}
HUGE_IDS = (2**63, 2**64, 10**23)
# Commands the generated examples may run: `ui` serves until stopped (its edges are tested below), and
# `train` always gets --dry-run (it plans, reads, and trains nothing).
SKIPPED = {("ui",)}
WRITERS = {("delete",), ("restore",), ("tag",), ("eval",), ("train",), ("reproduce",)}  # may write the store
QUICK = settings(max_examples=6, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))
THOROUGH = settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def build_store(path: Path) -> Path:
    """Hand-made finished trials (no training): completed, diverged and failed runs of two archs, a tag."""
    store = Store(str(path))
    for index, (arch, bn, status) in enumerate([("mlp", "pre", "completed"), ("mlp", "post", "completed"),
                                                 ("cnn", "pre", "completed"), ("cnn", "none", "diverged"),
                                                 ("mlp", "none", "failed")]):
        fields = dict(arch=arch, bn=bn, bn_impl="custom", fused=False, seed=index, epochs=3, batch_size=128, lr=0.05,
                      momentum=0.9, weight_decay=5e-4, optimizer="sgd", schedule="onecycle", augment=True,
                      train_subset=None, device="cpu", bnrun_version="0", torch_version="0", python_version="3",
                      git_commit=None)
        # a tiny recipe as the stored identity, so that a generated `reproduce` of a valid id trains for a second,
        # not the default trial (10 epochs of the CNN on the whole training set)
        identity = {"arch": arch, "bn": bn, "bn_impl": "custom", "fused": False, "epochs": 1, "train_subset": 256}
        run_id = store.claim_run(fields, f"key-{index}", json.dumps(identity)).run_id
        for epoch in range(1, 4):
            store.add_epoch(run_id, EpochRecord(epoch, 1.0 / epoch, 0.8, 0.5, 0.8 + epoch / 100, 0.05, 1.0, 0.9))
        if status == "completed":
            store.complete_run(run_id, FinalMetrics(0.2, 0.95, 0.9, 0.9, 0.3, 0.89, 0.3, 0.9), b"not a checkpoint")
        else:
            store.end_run(run_id, status, "hand-made")
    store.label_runs([1], add=("keep",))
    store.close()
    return path


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("hostile") / "store.db")


def commands() -> list[tuple[tuple[str, ...], typer.core.TyperCommand]]:
    """Every command of the app, by path (`export model` is ("export", "model"))."""
    found = []

    def walk(command, path: tuple[str, ...]) -> None:
        if hasattr(command, "list_commands"):
            context = typer.Context(command)
            for name in command.list_commands(context):
                walk(command.get_command(context, name), (*path, name))
        elif path not in SKIPPED:
            found.append((path, command))

    walk(typer.main.get_command(app), ())
    return found


def declared_type(param) -> tuple[type, bool]:
    """A parameter's declared value type (Optional and list unwrapped) and whether it takes a list."""
    annotation = param.type_descriptor.annotation
    many = False
    while typing.get_origin(annotation) in (typing.Union, list, typing.types.UnionType):
        many = many or typing.get_origin(annotation) is list
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return annotation, many


COMMANDS = commands()


# Values at the edges of each type.
INTEGERS = st.sampled_from([0, -1, 1, 2, 12, 2**31, 2**63 - 1, *HUGE_IDS])
FLOATS = st.sampled_from(["nan", "inf", "-inf", "-0.0", "5e-324", "1e308", "0", "1", "0.05", "-3"])
TEXTS = st.one_of(
    st.sampled_from(["", " ", "\t", "١٢", "²", "ß", "mlp", "pre", "none", "1-3", "3-1", "1,,2", "0x10", "=", "a=b",
                     "\x00", "\x1b[31m", "é" * 3, "x" * 10_000, "1-99999999999", "lr=", "lr=abc", "arch=mlpp"]),
    st.text(max_size=20),
)
PATHS = st.sampled_from(["", "/", "/proc", "/proc/nope/x", "/nonexistent/dir/out.txt", ".", "/dev/full",
                         "{tmp}", "{tmp}/out.csv", "{tmp}/missing/out.csv"])
# reproduce of a stored run trains it again (minutes): its generated ids name no stored run.
ARGUMENTS = {("reproduce",): st.one_of(INTEGERS.filter(lambda n: not 1 <= n <= 5).map(str), TEXTS)}
WHERE = st.builds(lambda name, value: f"{name}={value}", st.sampled_from(PIVOT_FIELDS),
                  st.one_of(TEXTS, INTEGERS.map(str), FLOATS, st.sampled_from([v for c in CHOICES.values() for v in c])))


def value_strategy(param) -> st.SearchStrategy[str]:
    """A hostile value for one declared parameter, by its declared type (and, for --where and the
    filters, the training options and their choices)."""
    if param.name == "where":
        return WHERE
    if param.name in ("by", "x"):
        return st.one_of(st.sampled_from(PIVOT_FIELDS), TEXTS)
    if param.name in CHOICES:
        return st.one_of(st.sampled_from(CHOICES[param.name]).map(str), TEXTS)
    kind, _ = declared_type(param)
    if kind is int:
        return INTEGERS.map(str)
    if kind is float:
        return FLOATS
    if kind is Path:
        return PATHS
    return st.one_of(TEXTS, INTEGERS.map(str), FLOATS)


@st.composite
def command_lines(draw, path: tuple[str, ...], command) -> list[str]:
    """One command line: some of the command's options, hostile values, and its arguments."""
    words = list(path)
    for param in command.params:
        if param.name in ("help", "db"):
            continue
        if isinstance(param, typer.core.TyperArgument):
            _, many = declared_type(param)
            count = draw(st.integers(0 if not param.required else 1, 3 if many else 1))
            values = ARGUMENTS.get(path, st.one_of(INTEGERS.map(str), TEXTS, value_strategy(param)))
            words += [draw(values) for _ in range(count)]
        elif draw(st.integers(0, 2)) == 0:
            if param.is_flag:
                words.append(param.opts[0] if draw(st.booleans()) or not param.secondary_opts else param.secondary_opts[0])
            else:
                words += [param.opts[0], draw(value_strategy(param))]
    if path == ("train",):
        words.append("--dry-run")
    return words


def run_line(words: list[str], store: Path, tmp: Path):
    words = [word.replace("{tmp}", str(tmp)) for word in words]
    before = store.read_bytes()
    with contextlib.chdir(tmp):  # a command's default output (plot's learning_curves.png) lands in tmp
        result = runner.invoke(app, [*words, "--db", str(store)],
                               env={"COLUMNS": "80", "BNRUN_DATA_DIR": str(tmp / "data")})
    return result, before


def is_verdict(result, path: tuple[str, ...]) -> bool:
    """reproduce's exit 1 of a run it retrained: its verdict (not bit-identical, as a hostile store's made-up
    numbers never are), printed on stdout after the training's progress on stderr; not an error."""
    return path == ("reproduce",) and result.exit_code == ExitCode.FAILED and " trained again" in result.stdout


def assert_well_behaved(result, path: tuple[str, ...], store: Path, before: bytes) -> None:
    code = result.exit_code
    shown = f"exit {code}: {result.output[-600:]!r} ({result.exception!r})"
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), shown
    assert code in EXIT_CODES, shown
    assert "Traceback" not in result.output, shown
    if code != 0 and not is_verdict(result, path):
        assert len(result.stderr.strip().splitlines()) <= 1, shown
    if path not in WRITERS:
        assert store.read_bytes() == before, f"{path} changed the store: {shown}"


def fresh_copy(store: Path, tmp: Path) -> Path:
    copy = tmp / "copy.db"
    shutil.copyfile(store, copy)
    return copy


def check_command(path, command, hostile_store, tmp_path, budget):
    @budget
    @given(words=command_lines(path, command))
    def examples(words):
        store = fresh_copy(hostile_store, tmp_path)
        result, before = run_line(words, store, tmp_path)
        assert_well_behaved(result, path, store, before)

    examples()


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(path) for path, _ in COMMANDS])
def test_every_command_answers_generated_input_in_one_line(path, command, hostile_store, tmp_path):
    check_command(path, command, hostile_store, tmp_path, QUICK)


@pytest.mark.slow
@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(path) for path, _ in COMMANDS])
def test_every_command_answers_many_generated_inputs_in_one_line(path, command, hostile_store, tmp_path):
    check_command(path, command, hostile_store, tmp_path, THOROUGH)


# The routes: paths and query parameters from the same strategies.

ROUTES = ("/", "/runs", "/runs/{id}", "/api/runs", "/api/runs/{id}", "/compare")
QUERY_NAMES = ("arch", "bn", "bn_impl", "run_id", "since", "where", "metric", "seeds", "by", "all", "page", "per_page",
               "sort", "status", "tag", "deleted", "ids")


@st.composite
def requests(draw) -> tuple[str, dict]:
    segment = quote(draw(st.one_of(INTEGERS.map(str), TEXTS)), safe="")  # as a browser sends it
    route = draw(st.sampled_from(ROUTES)).replace("{id}", segment)
    names = draw(st.lists(st.sampled_from(QUERY_NAMES), max_size=4))
    return route, {name: draw(st.one_of(TEXTS, INTEGERS.map(str), FLOATS, WHERE)) for name in names}


def check_routes(hostile_store, budget) -> None:
    client = TestClient(create_app(str(hostile_store)), base_url="http://localhost")  # a 500 raises here

    @budget
    @given(request=requests())
    def examples(request):
        route, params = request
        before = hostile_store.read_bytes()
        response = client.get(route, params=params)
        assert response.status_code < 500, (route, params, response.status_code, response.text[:300])
        assert hostile_store.read_bytes() == before

    examples()


def test_every_route_answers_generated_input_below_500(hostile_store):
    check_routes(hostile_store, settings(QUICK, max_examples=60))


@pytest.mark.slow
def test_every_route_answers_many_generated_inputs_below_500(hostile_store):
    check_routes(hostile_store, settings(THOROUGH, max_examples=1500))


# The acceptance list's edges, and the examples Hypothesis shrank, as explicit tests.

def one_line_failure(result, code: int = ExitCode.USAGE) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnrun: error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("run_id", HUGE_IDS)
@pytest.mark.parametrize("line", [["show", "{id}"], ["eval", "--run-id", "{id}"], ["compare", "1", "{id}"],
                                  ["export", "model", "{id}", "--output", "{tmp}/m.pt"], ["reproduce", "{id}"],
                                  ["delete", "{id}"]], ids=lambda line: " ".join(line[:2]))
def test_run_ids_past_the_stores_range_are_one_line(line, run_id, hostile_store, tmp_path):
    store = fresh_copy(hostile_store, tmp_path)
    words = [word.replace("{id}", str(run_id)) for word in line]
    result, before = run_line(words, store, tmp_path)
    message = one_line_failure(result)
    assert str(run_id) in message
    assert store.read_bytes() == before


@pytest.mark.parametrize("run_id", [2**63 - 1, *HUGE_IDS])
def test_routes_answer_ids_past_the_stores_range_with_404(run_id, hostile_store):
    client = TestClient(create_app(str(hostile_store)), base_url="http://localhost")
    for route in (f"/runs/{run_id}", f"/api/runs/{run_id}"):
        assert client.get(route).status_code == 404
    assert client.get("/runs", params={"page": str(run_id)}).status_code in (400, 404)


@pytest.mark.parametrize("words", [
    ["train", "--train-subset", "512", "--batch-size", "1000", "--dry-run"],
    ["train", "--batch-size", "100000", "--dry-run"],
    ["train", "--train-subset", "99999999", "--dry-run"],
    ["train", "--epochs", str(10**23), "--dry-run"],
    ["report", "--by", ""],
    ["report", "--by", " "],
    ["runs", "--where", f"batch_size={10**23}"],
    ["runs", "--run-id", "1-99999999999"],
    ["runs", "--run-id", "١٢"],
    ["report", "--run-id", f"{2**63}"],
    ["train", "--arch", "0\x1e0", "--dry-run"],  # found by Hypothesis: a record separator split the line
    ["runs", "--where", "study=a\u2028b", "--sort", "\x85"],
    ["plot", "--x", "arch"],  # found by Hypothesis: a categorical axis crashed the sensitivity plot
    ["plot", "--x", ""],
    ["plot", "--diagnostic", "grad_norm"],
    ["plot", "--all", "--x", "ghost_batch"],
    ["train", "--seeds", str(2**31), "--yes", "--dry-run"],  # found in CI: --yes let the plan list 2^31 seeds
    ["train", "--seed", str(2**63), "--dry-run"],
    ["claims", "--claims", "/dev/zero"],  # found in CI: a device read forever until memory ran out
    ["claims", "--claims", "/proc"],  # found by Hypothesis: an option every trial leaves unset  # runs trained without --diagnostics: the command that records them
], ids=lambda words: " ".join(words)[:60].encode("unicode_escape").decode())
def test_impossible_values_are_refused_in_one_line(words, hostile_store, tmp_path):
    result, before = run_line(words, hostile_store, tmp_path)
    one_line_failure(result)
    assert hostile_store.read_bytes() == before


@pytest.mark.parametrize("words,says", [
    (["show", "abc"], "invalid value for 'run_id': not an integer (see "),
    (["train", "--seeds", "abc", "--dry-run"], "invalid value for '--seeds': not an integer (see "),
    (["runs", "--epoch", "3"], "no such option: --epoch"),
    (["train", "--lr", "0.1,,0.2", "--dry-run"], "--lr: an empty value in '0.1,,0.2'"),  # not a grid of two
    (["runs", "--run-id", "1,,3"], "--run-id: an empty value in '1,,3'"),
])
def test_slips_are_named_in_bnruns_words(words, says, hostile_store, tmp_path):
    result, _ = run_line(words, hostile_store, tmp_path)
    assert says in one_line_failure(result)


@pytest.mark.parametrize("words", [["runs", "--where", "batch_size=4096"], ["runs", "--tag", "absent"],
                                   ["report", "--where", "lr=0.7"], ["export", "runs", "--arch", "cnn", "--bn", "post"]])
def test_an_empty_selection_exits_with_its_own_code(words, hostile_store, tmp_path):
    result, _ = run_line(words, hostile_store, tmp_path)
    one_line_failure(result, ExitCode.NOTHING_MATCHED)


def test_the_view_answers_only_its_own_host_names(hostile_store):
    client = TestClient(create_app(str(hostile_store)), base_url="http://localhost")
    assert client.get("/api/runs", headers={"Host": "rebind.example:8000"}).status_code == 400
    assert client.get("/runs/1", headers={"Host": "rebind.example"}).status_code == 400
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST"):
        assert client.get("/api/runs", headers={"Host": host}).status_code == 200, host
    allowed = TestClient(create_app(str(hostile_store), access_for("127.0.0.1", ("bnrun.lab",))),
                         base_url="http://bnrun.lab")
    assert allowed.get("/api/runs").status_code == 200


def test_beyond_loopback_a_request_needs_the_token(hostile_store):
    access = access_for("0.0.0.0")
    assert access.token
    client = TestClient(create_app(str(hostile_store), access), base_url="http://127.0.0.1:8000")
    assert client.get("/runs").status_code == 401
    assert client.get("/runs", params={"token": "wrong" * 8}).status_code == 401
    assert client.get("/runs", params={"token": access.token}).status_code == 200
    assert client.get("/api/runs").status_code == 200  # the cookie set by the last response
    client.cookies.clear()
    assert client.get("/api/runs", headers={"Cookie": "bnrun_token=\x00bad"}).status_code == 401
    assert TestClient(create_app(str(hostile_store), access_for("0.0.0.0", require_token=False)),
                      base_url="http://127.0.0.1:8000").get("/runs").status_code == 200


def test_ui_on_a_busy_port_or_a_foreign_address_is_one_line(hostile_store):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        message = one_line_failure(runner.invoke(app, ["ui", "--db", str(hostile_store), "--port", str(port)]))
    assert "cannot listen" in message and "serving" not in message
    one_line_failure(runner.invoke(app, ["ui", "--db", str(hostile_store), "--host", "203.0.113.7", "--port", "8000"]))
    for bad in (["--port", "0"], ["--port", "70000"], ["--allowed-hosts", "a b"], ["--token", "short"],
                ["--token", "x" * 20, "--no-token"]):
        one_line_failure(runner.invoke(app, ["ui", "--db", str(hostile_store), *bad]))


def test_reading_commands_never_change_the_store(hostile_store, tmp_path):
    for words in (["runs"], ["show", "1"], ["report"], ["compare", "1", "2"], ["export", "runs"],
                  ["export", "epochs", "1-3"], ["runs", "--deleted"]):
        result, before = run_line(words, hostile_store, tmp_path)
        assert result.exit_code in EXIT_CODES and hostile_store.read_bytes() == before, words


def test_a_run_stamp_is_not_a_date_filter_overflow(hostile_store, tmp_path):
    result, _ = run_line(["runs", "--since", str(datetime.max).replace(" ", "T")], hostile_store, tmp_path)
    assert result.exit_code in (ExitCode.NOTHING_MATCHED, ExitCode.USAGE)
    one_line_failure(run_line(["runs", "--since", "99999-01-01"], hostile_store, tmp_path)[0])
    assert STORED_INT_MAX == 2**63 - 1
