"""The shipped results store (`bnrun.db`, the study): the assignment's groups at 5 seeds, the
sweeps, and a shipped model that re-evaluates to its stored accuracy. Works on a copy: the
shipped file is never written."""

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


FIVE_SEED_GRID = ["--run-id", "1-32,204-215"]  # the default recipe; the sweeps' ids lie between


def report_json(db, *args: str) -> dict:
    import json

    result = runner.invoke(app, ["report", "--db", str(db), "--format", "json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_assignment_groups_have_five_seeds_and_meet_the_targets(shipped_copy):
    """Run ids 1-12 are the assignment's trials; with the default recipe every custom-BN group and
    the MLP's no-BN and torch.nn groups have seeds 0-4, the CNN's reference groups at least 2 (this session's budget)."""
    groups = {(g["arch"], g["bn"], g["bn_impl"]): g for g in report_json(shipped_copy, *FIVE_SEED_GRID)["groups"]}
    assert set(groups) == {(a, bn, impl) for a in ("mlp", "cnn") for bn in ("pre", "post") for impl in ("custom", "torch")} | {
        ("mlp", "none", "custom"), ("cnn", "none", "custom")}
    for (arch, bn, impl), group in groups.items():
        five = impl == "custom" and bn != "none" or arch == "mlp"
        assert group["seeds"] == [0, 1, 2, 3, 4] if five else group["n"] >= 2, (arch, bn, impl)
    assert {(g["epochs"], g["channels_last"]) for g in groups.values()} == {(20, False), (10, True)}
    mean = {key: g["test_acc_population_mean"] for key, g in groups.items()}
    assert min(mean["cnn", "pre", "custom"], mean["cnn", "post", "custom"]) >= 0.930
    assert mean["mlp", "pre", "custom"] >= 0.900
    store = Store(str(shipped_copy), read_only=True)
    assert [(r.arch, r.bn, r.seed) for r in store.list_runs()[:12]] == [
        (arch, bn, seed) for arch in ("mlp", "cnn") for bn in ("pre", "post") for seed in range(3)]
    store.close()


@pytest.mark.parametrize(("by", "arch", "values"), [("lr", "mlp", [0.003, 0.01, 0.03, 0.05, 0.1, 0.3, 1.0, 3.0]),
                                                     ("lr", "cnn", [0.01, 0.03, 0.05, 0.1, 0.3, 1.0, 3.0]),
                                                     ("batch_size", "mlp", [16, 32, 64, 128, 256, 512])])
def test_sweeps_pivot_by_their_option(shipped_copy, by, arch, values):
    pivot = report_json(shipped_copy, "--by", by, "--arch", arch)
    assert pivot["columns"] == values
    assert {cell["bn"] for cell in pivot["cells"]} == {"none", "pre", "post"}


def test_eval_run_12_reproduces_stored_accuracy(shipped_copy):
    result = runner.invoke(app, ["eval", "--run-id", "12", "--save", "--db", str(shipped_copy)])
    assert result.exit_code == 0, result.output
    store = Store(str(shipped_copy))
    run, evaluation = store.get_run(12), store.evaluations(12)[-1]
    assert (run.arch, run.bn, run.status) == ("cnn", "post", "completed")
    assert evaluation.test_acc_population == run.test_acc_population
    assert evaluation.test_acc_running == run.test_acc_running
    store.close()
