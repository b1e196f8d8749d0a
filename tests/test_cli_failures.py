"""Failure handling: interrupts, divergence, invalid options, two writers on one store."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import subprocess
import time

import pytest
from typer.testing import CliRunner

from bnrun.cli import app
from conftest import bnrun_command, bnrun_in_process, default_sigint

runner = CliRunner()


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows(db, query):
    with sqlite3.connect(db) as connection:
        return connection.execute(query).fetchall()


@pytest.mark.parametrize("args,message", [
    (["--arch", "resnet"], "--arch: unknown value resnet"),
    (["--bn", "middle"], "--bn: unknown value middle"),
    (["--seeds", "0"], "--seeds must be a positive count"),
    (["--seeds", "-2"], "--seeds must be a positive count"),
    (["--lr", "0"], "--lr must be positive"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--data-dir", "/nonexistent/fmnist"], "--data-dir /nonexistent/fmnist does not exist"),
    (["--device", "gpu"], "--device gpu: a GPU is --device cuda"),  # difflib's nearest choice was cpu
])
def test_invalid_options_exit_2_and_leave_store_identical(mlp_trials_copy, args, message):
    before = digest(mlp_trials_copy)
    result = bnrun_in_process("train", *args, "--db", str(mlp_trials_copy))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert digest(mlp_trials_copy) == before


def test_unwritable_db_path_exits_2(tmp_path):
    result = bnrun_in_process("train", "--arch", "mlp", "--db", str(tmp_path / "no" / "such" / "dir" / "x.db"))
    assert result.returncode == 2
    assert "directory" in result.stderr and "does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_nan_loss_marks_diverged_and_sweep_goes_on(tmp_path):
    db = tmp_path / "nan.db"
    result = runner.invoke(app, ["train", "--arch", "mlp", "--bn", "none", "--seeds", "2", "--lr", "1e6",
                                 "--schedule", "constant", "--epochs", "1", "--train-subset", "1000", "--db", str(db)])
    assert result.exit_code == 0, result.output
    statuses = rows(db, "select id, status, note from runs order by id")
    assert [s[1] for s in statuses] == ["diverged", "diverged"]  # the second trial still ran
    assert all("nan" in (s[2] or "").lower() or "inf" in (s[2] or "").lower() for s in statuses)
    assert rows(db, "select count(*) from checkpoints") == [(0,)]


def start_training(db, *extra):
    # 30,000 images in fp32: an epoch of several seconds on every CPU of the project's kind (12,000 in bf16 took
    # 1.1 s an epoch on the AMX Xeon, and "inside epoch 2" failed there), so "inside epoch 2" holds
    return subprocess.Popen(bnrun_command("train", "--arch", "cnn", "--bn", "pre", "--epochs", "3", "--train-subset", "30000",
                                          "--precision", "fp32", "--db", str(db), *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)


def wait_for(db, query, expected, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if db.exists() and rows(db, query) == expected:
                return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {query} == {expected}")


@pytest.mark.faults
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_mid_epoch_keeps_finished_epochs(tmp_path, sig):
    db = tmp_path / "sig.db"
    process = start_training(db)
    wait_for(db, "select count(*) from epochs", [(1,)])
    time.sleep(1.0)  # now inside epoch 2
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert rows(db, "select status, epochs_completed from runs") == [("interrupted", 1)]
    assert rows(db, "select epoch from epochs") == [(1,)]


@pytest.mark.slow
def test_two_processes_write_one_store(mlp_trials_copy):
    """Two sweeps in two processes add four trials each of two epochs to the three trials the store holds."""
    processes = [
        subprocess.Popen(bnrun_command("train", "--arch", "mlp", "--bn", bn, "--seeds", "2", "--epochs", "2",
                                       "--train-subset", "1500", "--db", str(mlp_trials_copy)),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for bn in ("post", "none")
    ]
    outputs = [p.communicate(timeout=240) for p in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
        assert "locked" not in stderr
    assert rows(mlp_trials_copy, "select count(*) from runs where status = 'completed'") == [(3 + 4,)]
    assert rows(mlp_trials_copy, "select count(*) from epochs") == [(3 + 4 * 2,)]


@pytest.mark.parametrize("words,message", [
    (["delete", "2-1"], "RUN: '2-1' runs backwards; write 1-2"),  # as --run-id 2-1 says it
    (["tag", "5-x", "--add", "a"], "RUN: '5-x' is not an id or a range like 1-12"),
    (["compare", "11"], "missing argument 'second' (see bnrun compare --help)"),  # its usage says both are needed
    (["runs", "--bnn", "pre"], "no such option: --bnn; did you mean --bn or --db? (see bnrun runs --help)"),
])
def test_run_arguments_say_what_is_wrong_with_them_as_run_id_does(mlp_trials_copy, words, message):
    before = digest(mlp_trials_copy)
    result = bnrun_in_process(*words, "--db", str(mlp_trials_copy))
    assert result.returncode == 2 and result.stderr.strip() == f"bnrun: error: {message}"
    assert digest(mlp_trials_copy) == before
