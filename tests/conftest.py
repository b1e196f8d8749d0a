"""Shared fixtures: every test gets its own store; the user's ./bnrun.db is never touched."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# Under pytest-xdist (the README's `-n auto`) the workers share the cores: libgomp's threads, which spin while
# they wait by default, would take one worker's CPU from the other (a default run took 4 min 22 s with them
# spinning, 2 min 44 s without, on the AVX2-only AMD EPYC). Set before any test module imports torch.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
# The store the checkout ships (docs/study.md): the tests that read it fail, never skip, when it is missing.
SHIPPED = REPO / "bnrun.db"


def figures_script():
    """scripts/figures.py as a module: the pages' figures and generated blocks, and how each is made."""
    spec = importlib.util.spec_from_file_location("figures_script", REPO / "scripts" / "figures.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script
# The groups the default run leaves out (pyproject's `-m 'not heavy'`) and CI's `pytest -m heavy` runs.
HEAVY = ("slow", "faults", "postgres", "ray", "isa", "compile", "browser")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks `heavy` every test of a heavy group, so one marker splits the suite in two exact halves."""
    for item in items:
        if any(item.get_closest_marker(name) for name in HEAVY):
            item.add_marker(pytest.mark.heavy)


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch) -> Path:
    db = tmp_path / "bnrun.db"
    monkeypatch.setenv("BNRUN_DB", str(db))
    return db


def default_sigint() -> None:
    """A terminal's Ctrl-C in the child even where the test runner was started with SIGINT ignored
    (a background job of a non-interactive shell): Python only handles SIGINT it inherits unignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def bnrun_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bnrun", *args]


def run_bnrun(*args: str, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    """bnrun in a subprocess, as a user runs it."""
    return subprocess.run(bnrun_command(*args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def bnrun_in_process(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """bnrun driven in this process (typer's CliRunner), answered as `run_bnrun` answers: for a test
    that needs the exit status and both streams but no process of its own. An exception bnrun does
    not handle propagates, as the traceback a user would see."""
    from typer.testing import CliRunner

    from bnrun.cli import app

    result = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False, prog_name="bnrun")
    return subprocess.CompletedProcess(["bnrun", *args], result.exit_code, result.stdout, result.stderr)


# -- one small store, trained once per session ----------------------------------------------------------

MLP_TRIALS = ["train", "--arch", "mlp", "--epochs", "1", "--train-subset", "600"]


@pytest.fixture(scope="session")
def mlp_trials(tmp_path_factory) -> Path:
    """Three MLP trials on 600 images, trained once per session: lr 0.05 at seed 0 (run 1), lr 0.1 at
    seeds 0 and 1 (runs 2 and 3). Shared by every test that asks: a test that writes takes `mlp_trials_copy`."""
    db = tmp_path_factory.mktemp("mlp_trials") / "trials.db"
    for lr, seeds in (("0.05", "1"), ("0.1", "2")):
        result = bnrun_in_process(*MLP_TRIALS, "--lr", lr, "--seeds", seeds, "--db", str(db))
        assert result.returncode == 0, result.stderr
    return db


@pytest.fixture
def mlp_trials_copy(mlp_trials, tmp_path) -> Path:
    """A private copy of the session's trained store, for a test that changes it."""
    copy = tmp_path / "trials.db"
    shutil.copyfile(mlp_trials, copy)
    return copy


# -- a real PostgreSQL server -------------------------------------------------------------------------

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL's tools refuse to run as root: run them as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """initdb + pg_ctl in a temporary directory: trust on the Unix socket, SCRAM passwords on TCP."""

    def __init__(self, base: Path) -> None:
        import shutil

        self.base, self.data, self.sockets, self.port = base, base / "data", base / "sockets", free_port()
        self.sockets.mkdir()
        if os.geteuid() == 0:
            shutil.chown(base, "postgres")
            shutil.chown(self.sockets, "postgres")
        subprocess.run(as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                                    "--auth-host=scram-sha-256", "-E", "UTF8"]), check=True, capture_output=True)
        options = f"-k {self.sockets} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
        subprocess.run(as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(base / "log"),
                                    "-w", "start"]), check=True, capture_output=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.sockets}&port={self.port}"

    def execute(self, sql: str) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(sql))
        engine.dispose()

    def stop(self) -> None:
        subprocess.run(as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]),
                       capture_output=True)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    if not (PG_BIN / "initdb").exists():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL 15 is not installed; .ci/run installs Debian's postgresql package")
        pytest.skip("PostgreSQL 15 is not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg")
    import tempfile

    server = PostgresServer(Path(tempfile.mkdtemp(prefix="bnrun-pg-")))
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_server) -> str:
    """A fresh, empty database on the session's server."""
    import uuid

    name = f"bnrun_{uuid.uuid4().hex[:12]}"
    postgres_server.execute(f"CREATE DATABASE {name}")
    return postgres_server.url(name)
