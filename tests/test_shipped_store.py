"""The shipped results store (`bnrun.db`, the full experiment): every group has n = 3 completed
trials and a shipped model re-evaluates to its stored accuracy. Works on a copy: the shipped
file is never written."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from bnrun.cli import app
from bnrun.store import Store
from conftest import REPO

SHIPPED = REPO / "bnrun.db"
pytestmark = pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped bnrun.db in this checkout")
runner = CliRunner()


@pytest.fixture
def shipped_copy(tmp_path):
    copy = tmp_path / "shipped.db"
    shutil.copyfile(SHIPPED, copy)
    return copy


def test_report_lists_every_group_with_three_seeds(shipped_copy):
    result = runner.invoke(app, ["report", "--db", str(shipped_copy), "--format", "json"])
    assert result.exit_code == 0, result.output
    import json

    groups = json.loads(result.output)["groups"]
    labels = {(g["arch"], g["bn"], g["bn_impl"]) for g in groups}
    assert labels == {(a, bn, "custom") for a in ("mlp", "cnn") for bn in ("pre", "post", "none")} | {("mlp", "pre", "torch"), ("cnn", "pre", "torch")}
    assert all(g["n"] == 3 and g["seeds"] == [0, 1, 2] for g in groups)


def test_eval_run_12_reproduces_stored_accuracy(shipped_copy):
    result = runner.invoke(app, ["eval", "--run-id", "12", "--db", str(shipped_copy)])
    assert result.exit_code == 0, result.output
    store = Store(str(shipped_copy))
    run, evaluation = store.get_run(12), store.evaluations(12)[-1]
    assert (run.arch, run.bn, run.status) == ("cnn", "post", "completed")
    assert evaluation.test_acc_population == run.test_acc_population
    assert evaluation.test_acc_running == run.test_acc_running
    store.close()
