"""Read-only commands (runs, show, report, plot, reproduce) on a store nobody may write: a
read-only mount (or mode 0444 in a 0555 directory), the same output as on a writable copy, the
file byte-identical, nothing created beside it; and a store that does not exist is never created."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_faults import read_only_command

from bnrun.store import Store
from conftest import bnrun_in_process

FIXTURE_0001 = Path(__file__).with_name("fixtures") / "store_0001.db"
COMMANDS = (["runs"], ["show", "1"], ["report", "--by", "bn", "--format", "csv"])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def head_store(path: Path) -> Path:
    """The 0001 fixture's runs in a store at the head revision, as bnrun leaves it."""
    shutil.copyfile(FIXTURE_0001, path)
    Store(str(path)).close()
    Path(f"{path}.lock").unlink(missing_ok=True)
    for leftover in path.parent.glob(f"{path.name}.bak-*"):
        leftover.unlink()
    return path


def lock_down(directory: Path) -> list[str] | None:
    """The prefix that runs a command with `directory` read-only, or None where that is impossible."""
    if os.geteuid() == 0 and subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        return None
    for child in directory.iterdir():
        child.chmod(0o444)
    return []


@pytest.mark.slow  # every read-only command as a subprocess, twice per store (7 s each)
@pytest.mark.parametrize("make", [head_store, lambda p: shutil.copyfile(FIXTURE_0001, p) and p], ids=["head", "older-schema"])
def test_read_only_commands_match_a_writable_copy_and_write_nothing(tmp_path, make):
    writable, directory = tmp_path / "rw" / "store.db", tmp_path / "ro"
    writable.parent.mkdir()
    directory.mkdir()
    make(writable)
    shutil.copyfile(writable, directory / "store.db")
    locked = directory / "store.db"
    if lock_down(directory) is None:
        pytest.skip("cannot make a read-only mount here (unshare -m refused)")
    before, listing = sha(locked), sorted(p.name for p in directory.iterdir())
    try:
        for command in COMMANDS:
            expected = bnrun_in_process(*command, "--db", str(writable))
            got = subprocess.run(read_only_command(directory, *command, "--db", str(locked)), capture_output=True,
                                 text=True, timeout=120)
            assert got.returncode == 0 == expected.returncode, got.stderr
            assert got.stdout.replace(str(locked), "DB") == expected.stdout.replace(str(writable), "DB")
        plots = [tmp_path / "rw.png", tmp_path / "ro.png"]
        assert bnrun_in_process("plot", "--output", str(plots[0]), "--db", str(writable)).returncode == 0
        plotted = subprocess.run(read_only_command(directory, "plot", "--output", str(plots[1]), "--db", str(locked)),
                                 capture_output=True, text=True, timeout=120)
        assert plotted.returncode == 0, plotted.stderr
        assert plots[1].stat().st_size > 10_000
    finally:
        directory.chmod(0o755)
    assert sha(locked) == before
    assert sorted(p.name for p in directory.iterdir()) == listing  # no lock, journal or backup file


def test_read_only_commands_write_nothing_even_where_writing_is_allowed(tmp_path):
    db = head_store(tmp_path / "store.db")
    before, listing = sha(db), sorted(p.name for p in tmp_path.iterdir())
    for command in COMMANDS:
        assert bnrun_in_process(*command, "--db", str(db)).returncode == 0
    (tmp_path / "out").mkdir()
    listing.append("out")
    plot = bnrun_in_process("plot", "--output", str(tmp_path / "out" / "curves.png"), "--db", str(db))
    assert plot.returncode == 0, plot.stderr
    assert sha(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(listing)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["curves.png"]


@pytest.mark.parametrize("url", ["foo://bar", "mysql://user@host/db"])
def test_a_database_bnrun_does_not_store_in_is_named_in_one_line(tmp_path, url):
    result = bnrun_in_process("runs", "--db", url)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "bnrun stores in SQLite (a path) or PostgreSQL" in lines[0] and "pip install" not in lines[0]


@pytest.mark.parametrize("command", [["report"], ["runs"], ["show", "1"], ["plot"], ["reproduce", "1"]])
def test_a_missing_store_is_never_created(tmp_path, command):
    db = tmp_path / "typo.db"
    result = bnrun_in_process(*command, "--db", str(db))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"no store at {db}" in lines[0]
    assert list(tmp_path.iterdir()) == []
