"""PostgreSQL as a store, against a real server (conftest.postgres_server): the store, the CLI
end to end, concurrent first starts, a killed trial reaped by the server's clock, and the
one-line errors for a missing driver, a bad URL, an unreachable server and wrong credentials."""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, text

from bnrun.store import EpochRecord, FinalMetrics, Store, migrate
from conftest import bnrun_command, run_bnrun

pytestmark = pytest.mark.postgres
TINY = ["--arch", "mlp", "--bn", "pre", "--epochs", "1", "--train-subset", "600"]


def query(url: str, sql: str) -> list[tuple]:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = [tuple(row) for row in connection.execute(text(sql))]
    engine.dispose()
    return rows


def fields(seed: int = 0) -> dict:
    return dict(arch="mlp", bn="pre", bn_impl="custom", fused=False, seed=seed, epochs=1, batch_size=128, lr=0.05,
                momentum=0.9, weight_decay=5e-4, optimizer="sgd", schedule="onecycle", augment=True, train_subset=None,
                device="cpu", bnrun_version="0", torch_version="0", python_version="3", git_commit=None)


def test_store_round_trip_and_claims(pg_url):
    store = Store(pg_url)
    assert store.migration is not None and store.migration.from_revision is None
    claim = store.claim_run(fields(), "key", "{}")
    assert claim.run_id == 1
    again = store.claim_run(fields(), "key", "{}")
    assert again.run_id is None and again.holder.id == 1 and again.holder.status == "running"  # running elsewhere
    store.add_epoch(1, EpochRecord(1, 0.5, 0.8, 0.4, 0.85, 0.05, 1.0, 0.9))
    store.complete_run(1, FinalMetrics(0.5, 0.8, 0.85, 0.85, 0.4, 0.84, 0.4, 0.85), b"checkpoint")
    done = store.claim_run(fields(), "key", "{}")
    assert done.run_id is None and done.holder.status == "completed"
    assert store.load_checkpoint(1) == b"checkpoint" and [e.epoch for e in store.epochs(1)] == [1]
    forced = store.claim_run(fields(), "key", "{}", force=True)
    assert forced.run_id == 2
    store.end_run(2, "failed", "boom")  # gives the claim up: the trial can run again
    assert store.claim_run(fields(), "key", "{}").run_id == 3
    store.close()


def test_heartbeats_and_staleness_use_the_server_clock(pg_url):
    store = Store(pg_url)
    run_id = store.claim_run(fields(), "key", "{}").run_id
    with store.session() as session:
        server_now = store.now(session)
    assert store.get_run(run_id).heartbeat_at == pytest.approx(server_now, abs=timedelta(seconds=5))
    engine = create_engine(pg_url)
    with engine.begin() as connection:  # another host's run whose heartbeat the server saw an hour ago
        connection.execute(text("UPDATE runs SET host = 'another-host', heartbeat_at = timezone('UTC', now()) - interval '1 hour'"))
    engine.dispose()
    assert store.orphan_ids() == {run_id}
    assert store.reap_orphans() == [run_id]
    assert store.get_run(run_id).status == "failed"
    store.close()


def test_cli_end_to_end(pg_url):
    trained = run_bnrun("train", *TINY, "--seeds", "2", "--db", pg_url, timeout=300)
    assert trained.returncode == 0, trained.stderr
    assert "2 completed" in trained.stdout
    for command in (["runs"], ["show", "1"], ["report"], ["report", "--format", "json"]):
        result = run_bnrun(*command, "--db", pg_url, timeout=120)
        assert result.returncode == 0, (command, result.stderr)
    assert '"n": 2' in run_bnrun("report", "--format", "json", "--db", pg_url).stdout
    evaluated = run_bnrun("eval", "--run-id", "1", "--save", "--db", pg_url, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    assert query(pg_url, "SELECT matches_stored FROM evaluations") == [(True,)]


def test_three_processes_start_together_on_an_empty_database(pg_url):
    processes = [subprocess.Popen(bnrun_command("train", *TINY, "--seed", str(seed), "--db", pg_url),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in range(3)]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    created = sum("created store" in err for _, err in outputs)
    assert created == 1  # one process migrated; the advisory lock made the others wait and find the head
    assert query(pg_url, "SELECT version_num FROM alembic_version") == [(migrate.head_revision(),)]
    assert query(pg_url, "SELECT seed, status FROM runs ORDER BY seed") == [(0, "completed"), (1, "completed"), (2, "completed")]


def test_sigkill_mid_trial_then_reaping(pg_url):
    # CNN epochs of 3,000 images take a second or more: the kill lands inside epoch 2 of 3
    process = subprocess.Popen(bnrun_command("train", "--arch", "cnn", "--bn", "pre", "--epochs", "3", "--train-subset", "3000",
                                             "--db", pg_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if query(pg_url, "SELECT count(*) FROM epochs")[0][0] >= 1:
                break
        except Exception:  # noqa: BLE001 - the store may not exist yet
            pass
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert query(pg_url, "SELECT status FROM runs") == [("running",)]
    listed = run_bnrun("runs", "--db", pg_url)
    assert "process gone" in listed.stdout
    reaped = run_bnrun("eval", "--run-id", "1", "--save", "--db", pg_url)  # writes: reaps, then refuses (no checkpoint)
    assert "marked runs 1 failed" in reaped.stderr
    assert query(pg_url, "SELECT status, note, claim FROM runs") == [("failed", "process ended without finishing", None)]
    again = run_bnrun("train", *TINY, "--db", pg_url, timeout=300)  # the reaped trial runs again
    assert again.returncode == 0 and "1 completed" in again.stdout


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_unreachable_server_bad_url_and_wrong_credentials(postgres_server, tmp_path):
    postgres_server.execute("DO $$ BEGIN CREATE ROLE bnrun_user LOGIN PASSWORD 'right'; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    closed = f"postgresql://bnrun_user:right@127.0.0.1:{postgres_server.port + 1}/postgres"
    assert "is the server running" in one_line(run_bnrun("runs", "--db", closed))
    wrong = f"postgresql://bnrun_user:wrong@127.0.0.1:{postgres_server.port}/postgres"
    line = one_line(run_bnrun("report", "--db", wrong))
    assert "password authentication failed" in line and ":wrong@" not in line  # the password is hidden
    assert "bad store URL" in one_line(run_bnrun("runs", "--db", "postgresql+psycopg://u@host:notaport/db"))
    stub = tmp_path / "no_driver"
    stub.mkdir()
    (stub / "psycopg.py").write_text("raise ImportError('psycopg is not installed here', name='psycopg')\n")
    missing = run_bnrun("runs", "--db", postgres_server.url(), env={"PYTHONPATH": str(stub)})
    assert "pip install 'bnrun[postgres]'" in one_line(missing)
