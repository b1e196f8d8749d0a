"""The shipped results store (`bnrun.db`, the study): the assignment's groups, the learning-rate
and batch-size sweeps, the depth and regularization studies, and a shipped model that re-evaluates
to its stored accuracy. Works on a copy: the shipped file is never written."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from bnrun.cli import app
from bnrun.store import Store
from conftest import SHIPPED

runner = CliRunner()
PLACEMENTS = {"none", "pre", "post"}


@pytest.fixture(scope="module")
def shipped_copy(tmp_path_factory):
    copy = tmp_path_factory.mktemp("shipped") / "shipped.db"
    shutil.copyfile(SHIPPED, copy)
    return copy


FIVE_SEED_GRID = ["--run-id", "1-32,204-215,371-393"]  # the default recipe; the sweeps' ids lie between
DEPTH = ["--arch", "mlp", "--where", "width=128", "--where", "epochs=10"]
REGULARIZATION = ["--arch", "mlp", "--where", "width=128", "--where", "epochs=30"]


def report_json(db, *args: str) -> dict:
    result = runner.invoke(app, ["report", "--db", str(db), "--format", "json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def cells(pivot: dict) -> dict[tuple, dict]:
    return {(cell["bn"], cell[pivot["by"]]): cell for cell in pivot["cells"]}


def test_assignment_groups_have_their_seeds_and_meet_the_targets(shipped_copy):
    """Run ids 1-12 are the assignment's trials; with the default recipe the CNN's custom pre and
    post have seeds 0-11 (seeds-cnn-12) and every other group seeds 0-4."""
    report = report_json(shipped_copy, *FIVE_SEED_GRID)
    groups = {(g["arch"], g["bn"], g["bn_impl"]): g for g in report["groups"]}
    assert set(groups) == {(a, bn, impl) for a in ("mlp", "cnn") for bn in ("pre", "post") for impl in ("custom", "torch")} | {
        ("mlp", "none", "custom"), ("cnn", "none", "custom")}
    for (arch, bn, impl), group in groups.items():
        twelve = arch == "cnn" and impl == "custom" and bn != "none"
        assert group["seeds"] == list(range(12 if twelve else 5)), (arch, bn, impl)
    (placement,) = [c for c in report["comparisons"] if (c["a"], c["b"]) == (
        "cnn bn=pre (custom+fused)", "cnn bn=post (custom+fused)")]
    assert placement["n"] == 12 and placement["ci95_high"] - placement["ci95_low"] < 0.004  # ±0.2 points
    mean = {key: g["test_acc_population_mean"] for key, g in groups.items()}
    assert min(mean["cnn", "pre", "custom"], mean["cnn", "post", "custom"]) >= 0.930
    assert mean["mlp", "pre", "custom"] >= 0.900
    store = Store(str(shipped_copy), read_only=True)
    runs = store.list_runs()
    store.close()
    assert [(r.arch, r.bn, r.seed) for r in runs[:12]] == [
        (arch, bn, seed) for arch in ("mlp", "cnn") for bn in ("pre", "post") for seed in range(3)]
    default = [r for r in runs if r.id <= 32 or 204 <= r.id <= 215]
    assert {(r.arch, r.epochs, r.channels_last) for r in default} == {("mlp", 20, False), ("cnn", 10, True)}


@pytest.mark.parametrize(("by", "filters", "values"), [
    ("lr", ["--arch", "mlp", "--where", "epochs=10", "--where", "batch_size=128", "--where", "depth=none"],
     [0.003, 0.01, 0.03, 0.05, 0.1, 0.3, 1.0, 3.0]),
    ("lr", ["--arch", "cnn", "--where", "epochs=2"], [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]),
    ("batch_size", ["--arch", "mlp", "--where", "epochs=10", "--where", "lr=0.05", "--where", "depth=none"],
     [16, 32, 64, 128, 256, 512]),
])
def test_sweeps_pivot_by_their_option(shipped_copy, by, filters, values):
    pivot = report_json(shipped_copy, "--by", by, *filters)
    assert pivot["columns"] == values
    assert {cell["bn"] for cell in pivot["cells"]} == PLACEMENTS
    assert all(cell["ended"] == 3 for cell in pivot["cells"])


def test_depth_study_every_depth_and_placement_at_three_seeds(shipped_copy):
    pivot = report_json(shipped_copy, "--by", "depth", *DEPTH, "--where", "lr=0.05")
    assert pivot["columns"] == [1, 2, 4, 8, 16, 32]
    found = cells(pivot)
    assert set(found) == {(bn, depth) for bn in PLACEMENTS for depth in pivot["columns"]}
    assert all(cell["n"] == 3 for cell in found.values())
    # what the README reports: the plain MLP stops training at depth 16, either placement still trains
    assert found["none", 8]["mean"] > 0.85 and max(found["none", 16]["mean"], found["none", 32]["mean"]) <= 0.11
    assert min(found["pre", 16]["mean"], found["post", 16]["mean"]) > 0.88


def test_depth_16_at_its_own_learning_rates(shipped_copy):
    pivot = report_json(shipped_copy, "--by", "lr", *DEPTH, "--where", "depth=16")
    assert pivot["columns"] == [0.01, 0.05, 0.2, 0.5]
    found = cells(pivot)
    assert all(cell["n"] == 3 for cell in found.values()) and len(found) == 12
    assert max(found["none", lr]["mean"] for lr in pivot["columns"]) <= 0.11


@pytest.mark.parametrize("dropout", ["0", "0.3"])
def test_regularization_study_sizes_dropout_placements(shipped_copy, dropout):
    pivot = report_json(shipped_copy, "--by", "train_subset", *REGULARIZATION, "--where", f"dropout={dropout}",
                        "--metric", "gen_gap")
    assert pivot["columns"] == [1000, 5000, 15000, 55000]
    found = cells(pivot)
    assert set(found) == {(bn, size) for bn in PLACEMENTS for size in pivot["columns"]}
    assert all(cell["n"] == 3 and cell["mean"] is not None for cell in found.values())
    assert all(found[bn, 1000]["mean"] > found[bn, 55000]["mean"] for bn in PLACEMENTS)  # more data, smaller gap


@pytest.mark.slow  # a pass over the 10,000 test images (test_cli_train's eval test covers the path by default)
def test_eval_run_12_reproduces_stored_accuracy(shipped_copy):
    result = runner.invoke(app, ["eval", "12", "--save", "--db", str(shipped_copy)])
    assert result.exit_code == 0, result.output
    store = Store(str(shipped_copy))
    run, evaluation = store.get_run(12), store.evaluations(12)[-1]
    assert (run.arch, run.bn, run.status) == ("cnn", "post", "completed")
    assert evaluation.test_acc_population == run.test_acc_population
    assert evaluation.test_acc_running == run.test_acc_running
    store.close()
