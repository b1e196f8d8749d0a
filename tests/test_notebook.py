"""The notebook API (`bnrun.load(db)`): one row per run, filters as --where takes them, accuracies in percent,
the same means as `bnrun report`, a read that never creates a store; on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import shutil

import pytest
from test_run_management_store import add_trial
from typer.testing import CliRunner

import bnrun
from bnrun.cli import app
from bnrun.errors import StoreError, UsageError
from bnrun.store import Store
from conftest import SHIPPED

pytest.importorskip("pandas")
GRID = ["--run-id", "1-32,204-215,371-393", "--arch", "mlp"]


def test_the_means_are_the_reports(tmp_path):
    db = tmp_path / "s.db"
    shutil.copyfile(SHIPPED, db)
    report = json.loads(CliRunner().invoke(app, ["report", "--format", "json", "--db", str(db), *GRID]).stdout)
    with bnrun.load(str(db)) as results:
        runs = results.runs(where={"arch": "mlp"}, ids=[*range(1, 33), *range(204, 216), *range(371, 394)])
        curves = results.epochs(runs.id[:2])
    means = runs.groupby(["bn", "bn_impl"]).test_acc_population.mean()
    for group in report["groups"]:
        assert means[group["bn"], group["bn_impl"]] == pytest.approx(100 * group["test_acc_population_mean"])
    assert runs.attrs["units"]["test_acc_population"] == "%" and runs.test_acc_population.between(80, 100).all()
    assert set(curves.run_id) == set(runs.id[:2]) and curves.val_acc.max() > 80


def test_a_run_without_bn_has_no_implementation_as_in_the_report(tmp_path):
    db = tmp_path / "s.db"
    shutil.copyfile(SHIPPED, db)
    with bnrun.load(str(db)) as results:
        runs = results.runs(where={"arch": "mlp"})
    assert set(runs[runs.bn == "none"].impl) == {"—"} and set(runs[runs.bn == "none"].bn_impl) == {"custom"}
    assert "—" not in set(runs[runs.bn != "none"].impl)


def fill(db: str) -> None:
    store = Store(db, create=True)
    for seed in range(3):
        add_trial(store, seed)
    add_trial(store, 3, finish=False)
    store.close()


def check_small_store(db: str) -> None:
    with bnrun.load(db) as results:
        runs = results.runs()
        assert list(runs.seed) == [0, 1, 2] and (runs.test_acc_population == 50.0).all()
        assert len(results.runs(statuses=())) == 4
        assert list(results.runs(where={"seed": [0, 2]}).seed) == [0, 2]
        assert results.runs(where={"lr": 0.1}).empty
        with pytest.raises(UsageError, match="unknown option 'learning_rate'"):
            results.runs(where={"learning_rate": 0.1})


def test_filters_and_units_on_sqlite(tmp_path):
    fill(str(tmp_path / "s.db"))
    check_small_store(str(tmp_path / "s.db"))


def test_a_read_never_creates_a_store(tmp_path):
    with pytest.raises(StoreError):
        bnrun.load(str(tmp_path / "missing.db"))
    assert not (tmp_path / "missing.db").exists()


@pytest.mark.postgres
def test_filters_and_units_on_postgresql(pg_url):
    fill(pg_url)
    check_small_store(pg_url)


@pytest.mark.parametrize("where, named", [({"arch": "mlpp"}, "mlp, cnn"), ({"lr": "abc"}, "not a number"),
                                          ({"arch": 3}, "mlp, cnn"), ({"lr": True}, "float")])
def test_a_bad_where_value_raises_naming_what_is_valid(where, named):
    from bnrun.errors import UsageError
    from bnrun.requests.notebook import where_filter

    with pytest.raises(UsageError, match=named) as raised:
        where_filter(where)
    assert "--" not in str(raised.value)
