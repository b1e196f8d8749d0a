"""The fault suite: each case is provoked for real (subprocesses, signals, byte-level damage,
a file-size limit for a full disk) and the store is checked afterwards."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from bnrun.store import Store, migrate
from conftest import REPO, bnrun_command, run_bnrun

pytestmark = pytest.mark.faults
FIXTURE_0001 = REPO / "tests" / "fixtures" / "store_0001.db"
TINY = ["--arch", "mlp", "--bn", "pre", "--epochs", "1", "--train-subset", "500"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def query(db: Path, sql: str):
    with sqlite3.connect(db) as connection:
        return connection.execute(sql).fetchall()


def integrity(db: Path) -> str:
    return query(db, "pragma integrity_check")[0][0]


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def popen(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(bnrun_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def wait_until(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


# -- concurrent starts ---------------------------------------------------------------------------

def start_three(db: Path) -> list[tuple[int, str]]:
    processes = [popen("train", "--arch", "mlp", "--bn", bn, "--epochs", "1", "--train-subset", "500", "--db", str(db))
                 for bn in ("pre", "post", "none")]
    return [(p.wait(timeout=240), p.stderr.read()) for p in processes]


@pytest.mark.parametrize("initial", ["new", "revision-0001"])
def test_three_processes_start_together(tmp_path, initial):
    db = tmp_path / "together.db"
    if initial == "revision-0001":
        shutil.copyfile(FIXTURE_0001, db)
    results = start_three(db)
    for code, stderr in results:
        assert code == 0, stderr
        assert "locked" not in stderr
    migrations = [stderr for _, stderr in results if "created store" in stderr or "upgraded store" in stderr]
    assert len(migrations) == 1  # exactly one process migrated
    old_runs = 2 if initial == "revision-0001" else 0
    assert query(db, "select count(*) from runs where status = 'completed'") == [(3 + old_runs - (1 if old_runs else 0),)]
    assert query(db, "select count(*) from epochs") == [(3 + 2 * old_runs,)]
    assert integrity(db) == "ok"
    if initial == "revision-0001":
        assert (tmp_path / "together.db.bak-0001").exists()


# -- killed processes ------------------------------------------------------------------------------

def test_sigkill_mid_epoch_then_runs_marks_failed(tmp_path):
    db = tmp_path / "killed.db"
    # 30,000 images in fp32: an epoch of seconds on every CPU of the project's kind, so "inside epoch 2" holds
    process = popen("train", "--arch", "cnn", "--bn", "pre", "--epochs", "3", "--train-subset", "30000", "--precision",
                    "fp32", "--db", str(db))
    wait_until(lambda: db.exists() and query(db, "select count(*) from epochs") == [(1,)])
    time.sleep(1.0)  # inside epoch 2
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert query(db, "select status from runs") == [("running",)]
    listed = run_bnrun("runs", "--db", str(db), timeout=60)  # read-only: flags the row, changes nothing
    assert listed.returncode == 0, listed.stderr
    assert "process gone" in listed.stdout and query(db, "select status from runs") == [("running",)]
    reaped = run_bnrun("eval", "--run-id", "1", "--save", "--db", str(db), timeout=60)  # any writing command reaps first
    assert "marked runs 1 failed" in reaped.stderr
    assert query(db, "select status, note, epochs_completed from runs") == [("failed", "process ended without finishing", 1)]
    assert query(db, "select epoch from epochs") == [(1,)]
    assert integrity(db) == "ok"


def test_stale_heartbeat_from_another_host_is_reaped(tmp_path):
    db = tmp_path / "stale.db"
    shutil.copyfile(FIXTURE_0001, db)
    with sqlite3.connect(db) as connection:
        connection.execute("update runs set status = 'running', heartbeat_at = '2026-01-01 00:00:00' where id = 2")
    result = run_bnrun("eval", "--run-id", "999", "--save", "--db", str(db), timeout=60)  # writes: reaps, then fails
    assert result.returncode == 2 and "marked runs 2 failed" in result.stderr
    assert query(db, "select status, note from runs where id = 2") == [("failed", "process ended without finishing")]


def test_a_running_trial_keeps_its_heartbeat_fresh(tmp_path, monkeypatch):
    """The heartbeat thread touches the row while the trial runs (a trial between two epochs for
    longer than the staleness limit must not look dead to other hosts), and stops at the end."""
    from bnrun.run import trial

    monkeypatch.setattr(trial, "HEARTBEAT_S", 0.2)
    store = Store(str(tmp_path / "beat.db"))
    claim = store.claim_run(dict(arch="mlp", bn="pre", bn_impl="custom", fused=False, seed=0, epochs=1, batch_size=8,
                                 lr=0.1, momentum=0.9, weight_decay=0.0, optimizer="sgd", schedule="constant",
                                 augment=False, train_subset=None, device="cpu", bnrun_version="t", torch_version="t",
                                 python_version="t", git_commit=None, grid_seeds=None), "key", "{}")
    with sqlite3.connect(tmp_path / "beat.db") as connection:
        connection.execute("update runs set heartbeat_at = '2026-01-01 00:00:00'")
    with trial.heartbeat(store, claim.run_id):
        time.sleep(1.0)
    beat = store.get_run(claim.run_id).heartbeat_at
    assert beat.year > 2026 or beat.month > 1  # touched by the thread, by the store's clock
    store.close()


# -- damaged or foreign stores -------------------------------------------------------------------------

def random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(64 * 1024))


def truncated(path: Path) -> None:
    shutil.copyfile(FIXTURE_0001, path)
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def newer_revision(path: Path) -> None:
    shutil.copyfile(FIXTURE_0001, path)
    with sqlite3.connect(path) as connection:
        connection.execute("update alembic_version set version_num = '9999_from_the_future'")
    with sqlite3.connect(path) as connection:
        connection.execute("pragma journal_mode = wal")  # as bnrun leaves its stores


def foreign_database(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("create table invoices (id integer primary key, total real)")


@pytest.mark.parametrize("damage,expected", [
    (random_bytes, "is not a SQLite database"),
    (truncated, "is truncated"),
    (newer_revision, "written by a newer bnrun (schema revision 9999_from_the_future)"),
    (foreign_database, "is a SQLite database but not a bnrun store"),
])
@pytest.mark.parametrize("command", [["runs"], ["report"], ["train", *TINY]])
def test_damaged_store_is_refused_untouched(tmp_path, damage, expected, command):
    db = tmp_path / "damaged.db"
    damage(db)
    before = sha(db)
    result = run_bnrun(*command, "--db", str(db), timeout=120)
    assert result.returncode != 0
    line = one_line_error(result)
    assert expected in line and str(db) in line
    assert sha(db) == before


def read_only_command(directory: Path, *args: str) -> list[str]:
    """Runs bnrun with `directory` mounted read-only (root ignores permission bits)."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return bnrun_command(*args)
    inner = " ".join(f"'{a}'" for a in bnrun_command(*args))
    return ["unshare", "-m", "sh", "-c", f"mount --bind -o ro '{directory}' '{directory}' && exec {inner}"]


def test_read_only_store_is_refused_untouched(tmp_path):
    directory = tmp_path / "ro"
    directory.mkdir()
    db = directory / "store.db"
    shutil.copyfile(FIXTURE_0001, db)
    before = sha(db)
    if os.geteuid() == 0 and subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a read-only mount here (unshare -m refused)")
    try:
        result = subprocess.run(read_only_command(directory, "train", *TINY, "--db", str(db)), capture_output=True, text=True,
                                timeout=120)
    finally:
        directory.chmod(0o755)
    assert result.returncode != 0
    assert "read-only" in one_line_error(result)
    assert sha(db) == before


def test_older_store_is_backed_up_then_upgraded_with_rows_intact(tmp_path):
    db = tmp_path / "old.db"
    shutil.copyfile(FIXTURE_0001, db)
    result = run_bnrun("eval", "--run-id", "999", "--save", "--db", str(db), timeout=60)  # writing commands upgrade
    assert "upgraded store" in result.stderr and f"from schema 0001 to {migrate.head_revision()}" in result.stderr
    backup = tmp_path / "old.db.bak-0001"
    assert query(backup, "select version_num from alembic_version") == [("0001",)]
    assert query(db, "select version_num from alembic_version") == [(migrate.head_revision(),)]
    assert query(db, "select id, status, seed, test_acc_population, grid_seeds from runs order by id") == [
        (1, "completed", 0, 0.785, None), (2, "diverged", 1, 0.785, None)]
    assert query(db, "select count(*) from epochs") == [(4,)]
    assert query(db, "select count(*) from evaluations") == [(1,)]
    blob, digest = query(db, "select blob, sha256 from checkpoints")[0]
    assert hashlib.sha256(blob).hexdigest() == digest
    assert integrity(db) == "ok"


# -- full disk -----------------------------------------------------------------------------------------

def limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_during_a_trial(tmp_path):
    db = tmp_path / "full.db"
    Store(str(db)).close()  # a fresh store, well under the limit
    process = popen("train", "--arch", "mlp", "--bn", "pre", "--epochs", "1", "--train-subset", "300", "--db", str(db),
                    preexec_fn=limit_file_size(600_000))  # the MLP checkpoint alone is ~0.95 MB
    _, stderr = process.communicate(timeout=180)
    assert process.returncode != 0
    assert "Traceback" not in stderr
    assert "check free disk space" in stderr.splitlines()[-1]
    assert integrity(db) == "ok"
    assert query(db, "select count(*) from checkpoints") == [(0,)]
    assert query(db, "select status from runs") in ([("failed",)], [])


# -- damaged checkpoint, missing data ---------------------------------------------------------------

def test_corrupted_checkpoint_is_reported_by_eval(tmp_path):
    db = tmp_path / "ckpt.db"
    trained = run_bnrun("train", *TINY, "--db", str(db))
    assert trained.returncode == 0, trained.stderr
    with sqlite3.connect(db) as connection:
        blob = bytearray(connection.execute("select blob from checkpoints").fetchone()[0])
        blob[len(blob) // 2] ^= 0xFF
        connection.execute("update checkpoints set blob = ?", (bytes(blob),))
    result = run_bnrun("eval", "--run-id", "1", "--db", str(db), timeout=120)
    assert result.returncode != 0
    assert "checkpoint of run 1 is damaged" in one_line_error(result)


def test_damaged_dataset_is_reported_before_any_row(tmp_path):
    data = tmp_path / "data"
    raw = data / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03" + os.urandom(100))
    db = tmp_path / "data.db"
    result = run_bnrun("train", *TINY, "--data-dir", str(data), "--db", str(db), timeout=120)
    assert result.returncode != 0
    assert "Fashion-MNIST" in one_line_error(result)
    assert not db.exists() or query(db, "select count(*) from runs") == [(0,)]


def test_missing_data_dir_is_reported_before_any_row(tmp_path):
    db = tmp_path / "data.db"
    result = run_bnrun("train", *TINY, "--data-dir", str(tmp_path / "nowhere"), "--db", str(db), timeout=60)
    assert result.returncode == 2
    assert "does not exist" in one_line_error(result)
    assert not db.exists()
