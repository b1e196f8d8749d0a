"""Exactly-once trials: two identical sweeps started together complete each (configuration,
seed) once, on SQLite and on PostgreSQL, and the report counts each seed once, also in an older
store that ran a trial twice."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from bnrun.analysis.grouping import build_report
from bnrun.store import Store
from conftest import bnrun_command, bnrun_in_process

GRID = ["train", "--arch", "mlp", "--bn", "pre,none", "--seeds", "2", "--epochs", "1", "--train-subset", "1500"]
FIXTURE_0001 = Path(__file__).with_name("fixtures") / "store_0001.db"


def two_sweeps_together(db: str) -> list[tuple[str, str]]:
    processes = [subprocess.Popen(bnrun_command(*GRID, "--db", db), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    return outputs


def completed_trials(db: str) -> list[tuple]:
    engine = create_engine(db if "://" in db else f"sqlite:///{db}")
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT config_key, seed, count(*) FROM runs WHERE status = 'completed' "
                                       "GROUP BY config_key, seed")).all()
    engine.dispose()
    return [tuple(r) for r in rows]


def check_exactly_once(db: str) -> None:
    outputs = two_sweeps_together(db)
    rows = completed_trials(db)
    assert len(rows) == 4 and all(count == 1 for *_, count in rows), rows
    said = "".join(err for _, err in outputs)
    assert "running elsewhere" in said or "already completed" in said  # the second sweep saw the first's claims
    report = bnrun_in_process("report", "--format", "json", "--db", db)
    assert report.returncode == 0, report.stderr
    assert [g for g in __import__("json").loads(report.stdout)["groups"] if g["n"] != 2] == []


@pytest.mark.slow  # two real processes, four trials each
def test_two_identical_sweeps_on_sqlite(tmp_path):
    check_exactly_once(str(tmp_path / "shared.db"))


@pytest.mark.postgres
def test_two_identical_sweeps_on_postgres(pg_url):
    check_exactly_once(pg_url)


def test_older_duplicates_are_counted_once_and_flagged(tmp_path):
    db = tmp_path / "old.db"
    shutil.copyfile(FIXTURE_0001, db)
    with sqlite3.connect(db) as connection:  # the same trial completed twice, as two racing sweeps once did
        connection.execute("UPDATE runs SET status = 'completed', seed = 0 WHERE id = 2")
        connection.execute("UPDATE runs SET config_key = (SELECT config_key FROM runs WHERE id = 1), "
                           "config_json = (SELECT config_json FROM runs WHERE id = 1) WHERE id = 2")
    store = Store(str(db))  # upgrading keeps both rows; only the latest holds the trial's claim
    runs = store.list_runs()
    store.close()
    assert [(r.id, r.claim) for r in runs] == [(1, None), (2, 1)]
    report = build_report(runs)
    assert [len(g.runs) for g in report.groups] == [1] and report.groups[0].runs[0].id == 2
    assert report.repeats == (1,)
    text_report = bnrun_in_process("report", "--format", "markdown", "--db", str(db))
    assert "runs 1 repeat a (configuration, seed)" in text_report.stdout
