"""Study tools end to end on the real data subset: grids over any option with a diverging
learning rate, `report --by`, `plot --x`, diagnostics, `eval --batch-stats`, `reproduce`."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3

import pytest
from typer.testing import CliRunner

from bnrun.cli import app
from bnrun.cli.options import GridOptions, build_sweep
from bnrun.errors import UsageError
from bnrun.store import Store

runner = CliRunner()
# lr 1000 diverges for both placements within the first epoch; 0.05 trains.
GRID = ["--arch", "mlp", "--bn", "pre,none", "--lr", "0.05,1000", "--epochs", "1", "--train-subset", "2000"]


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory):
    db = tmp_path_factory.mktemp("grid") / "grid.db"
    result = invoke("train", *GRID, "--diagnostics", "--db", str(db))
    assert result.exit_code == 0, result.output
    assert "grid: 2 bn × 2 lr × 1 seed = 4 trials" in result.output
    return db


def test_grid_stores_every_trial_with_an_honest_status(grid_store):
    store = Store(str(grid_store))
    runs = {(r.bn, r.lr): r for r in store.list_runs()}
    store.close()
    assert set(runs) == {("pre", 0.05), ("pre", 1000.0), ("none", 0.05), ("none", 1000.0)}
    assert runs["pre", 0.05].status == runs["none", 0.05].status == "completed"
    assert runs["pre", 1000.0].status == runs["none", 1000.0].status == "diverged"
    assert all(r.diagnostics and r.cpu_features is not None and r.torch_threads >= 1 for r in runs.values())


def test_second_run_of_the_grid_skips_every_trial_that_ran_to_an_outcome(grid_store):
    result = invoke("train", *GRID, "--diagnostics", "--db", str(grid_store))
    assert result.exit_code == 0, result.output
    assert "0 completed; 4 skipped" in result.output and "already diverged (--force reruns it)" in result.output
    labels = [line.split(": ", 1)[1] for line in result.output.splitlines() if line.startswith("skip ")]
    # each trial's label names the grid's lr beside the model, so that no two read alike
    bns = {"pre": "bn=pre (custom+fused)", "none": "bn=none"}  # without BN no implementation is named
    assert sorted(labels) == sorted(f"mlp {bn} lr={lr} seed=0" for bn in bns.values() for lr in ("0.05", "1000"))


@pytest.mark.parametrize("fmt", ["table", "markdown", "latex", "csv", "json"])
def test_report_by_lr_shows_the_diverged_learning_rate(grid_store, fmt):
    result = invoke("report", "--by", "lr", "--format", fmt, "--db", str(grid_store))
    assert result.exit_code == 0, result.output
    assert "diverged 1/1" in result.output or fmt in ("csv", "json")
    if fmt == "csv":
        cells = [row for row in csv.DictReader(io.StringIO(result.output)) if row["row_type"] == "cell"]
        diverged = {(row["bn"], float(row["lr"])) for row in cells if row["diverged"] == "1"}
        assert diverged == {("pre", 1000.0), ("none", 1000.0)}
    if fmt == "json":
        payload = json.loads(result.output)
        assert payload["by"] == "lr" and payload["columns"] == [0.05, 1000.0]
        trained = next(c for c in payload["cells"] if c["bn"] == "pre" and c["lr"] == 0.05)
        assert trained["n"] == 1 and trained["diverged"] == 0 and 0.5 < trained["mean"] < 1


def test_plot_against_lr_writes_a_png(grid_store, tmp_path):
    output = tmp_path / "lr.png"
    result = invoke("plot", "--x", "lr", "--output", str(output), "--db", str(grid_store))
    assert result.exit_code == 0, result.output
    data = output.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 500 and height > 300


@pytest.mark.parametrize("name", ["loss_ratio", "mode_gap", "smoothness", "grad_norm"])
def test_plot_each_diagnostic(grid_store, tmp_path, name):
    output = tmp_path / f"{name}.png"
    result = invoke("plot", "--diagnostic", name, "--output", str(output), "--db", str(grid_store))
    assert result.exit_code == 0, result.output
    assert output.read_bytes().startswith(b"\x89PNG")


def test_diagnostics_are_stored_and_shown(grid_store):
    store = Store(str(grid_store))
    run = next(r for r in store.list_runs() if r.bn == "pre" and r.status == "completed")
    records = store.diagnostics_by_run([run.id])[run.id]
    store.close()
    kinds = {r.kind for r in records}
    assert kinds == {"loss_ratio", "grad_norm", "bn_input_mean", "bn_input_std", "val_acc_batch_stats", "loss_range",
                     "grad_change", "beta_smoothness", "seconds"}
    ratios = {r.x: r.value for r in records if r.kind == "loss_ratio"}
    assert len(ratios) == 9 and ratios[0.001] == pytest.approx(1.0, abs=0.05)  # a tiny step barely moves the loss
    assert {r.name for r in records if r.kind == "bn_input_std"} == {"2", "5"}  # the two BN layers of the MLP
    shown = invoke("show", str(run.id), "--db", str(grid_store))
    assert shown.exit_code == 0 and "one-step loss ratio" in shown.output and "β-smoothness" in shown.output
    report = invoke("report", "--format", "json", "--db", str(grid_store))
    group = next(g for g in json.loads(report.output)["groups"] if g["bn"] == "pre")
    assert group["diag_stable_eta_mean"] > 0 and group["diag_beta_smoothness_mean"] > 0


def test_diagnostics_do_not_change_training(grid_store, tmp_path):
    plain = tmp_path / "plain.db"
    result = invoke("train", "--arch", "mlp", "--bn", "pre", "--lr", "0.05", "--epochs", "1", "--train-subset", "2000",
                    "--db", str(plain))
    assert result.exit_code == 0, result.output
    with_probes, without = Store(str(grid_store)), Store(str(plain))
    a = next(r for r in with_probes.list_runs() if r.bn == "pre" and r.lr == 0.05)
    b = without.list_runs()[0]
    with_probes.close(), without.close()
    assert (a.train_loss, a.test_acc_population, a.test_acc_running) == (b.train_loss, b.test_acc_population, b.test_acc_running)


def trained_run(db) -> int:
    """The id of the grid's completed BN-pre run."""
    store = Store(str(db))
    run_id = next(r.id for r in store.list_runs() if r.bn == "pre" and r.status == "completed")
    store.close()
    return run_id


def copy_of(grid_store, tmp_path, name: str):
    db = tmp_path / name
    shutil.copy(grid_store, db)
    return db, trained_run(db)


@pytest.mark.slow  # passes over the test set at each batch size
def test_eval_with_batch_statistics(grid_store, tmp_path):
    db, run_id = copy_of(grid_store, tmp_path, "copy.db")
    result = invoke("eval", str(run_id), "--batch-stats", "2,8,32", "--save", "--db", str(db))
    assert result.exit_code == 0, result.output
    for size in (2, 8, 32):
        assert f"batches of {size}" in result.output
    store = Store(str(db))
    (evaluation,) = store.evaluations(run_id)
    store.close()
    stats = {int(k): v for k, v in json.loads(evaluation.batch_stats_json).items()}
    assert set(stats) == {2, 8, 32} and stats[2][1] < stats[32][1]  # two images per batch normalize badly
    output = tmp_path / "batch.png"
    plotted = invoke("plot", "--diagnostic", "batch_stats", "--run-id", str(run_id), "--output", str(output), "--db", str(db))
    assert plotted.exit_code == 0, plotted.output
    bad = invoke("eval", "--run-id", str(run_id), "--batch-stats", "1", "--db", str(db))
    assert bad.exit_code == 2 and "--batch-stats must be at least 2" in bad.output


def test_reproduce_is_bit_identical_on_this_machine(grid_store):
    run_id = trained_run(grid_store)
    before = grid_store.read_bytes()
    result = invoke("reproduce", str(run_id), "--db", str(grid_store))
    assert result.exit_code == 0, result.output
    assert "bit-identical" in result.output
    assert grid_store.read_bytes() == before  # the original store is only read


def reproduced_after(grid_store, tmp_path, change: str):
    """`bnrun reproduce` of the trained run in a copy of the store where `change` (SQL on that run's id) ran;
    (the result, the run id)."""
    db, run_id = copy_of(grid_store, tmp_path, "altered.db")
    with sqlite3.connect(db) as connection:
        connection.execute(change, (run_id,))
    return invoke("reproduce", str(run_id), "--db", str(db)), run_id


def test_reproduce_reports_the_first_epoch_that_differs(grid_store, tmp_path):
    result, _ = reproduced_after(grid_store, tmp_path,
                                 "UPDATE epochs SET val_acc = val_acc + 0.01 WHERE run_id = ? AND epoch = 1")
    assert result.exit_code == 1, result.output
    assert "differs first at epoch 1" in result.output and "  val_acc: Δ -0.01\n    stored " in result.output


def test_reproduce_refuses_a_run_that_stopped_before_its_outcome(grid_store, tmp_path):
    """An interrupted run retrained to the end read as a mismatch ("epochs completed: Δ +3", exit 1)."""
    result, run_id = reproduced_after(grid_store, tmp_path, "UPDATE runs SET status = 'interrupted' WHERE id = ?")
    assert result.exit_code == 2, result.output
    assert f"run {run_id} is interrupted after 1 of 1 epochs: reproduce retrains a run that completed" in result.output


def test_reproduce_names_commits_as_git_abbreviates_them():
    from bnrun.run.provenance import differences

    stored, now = {"git_commit": "8c17a7885651c5c8e7fff62fd5be77bea66a57ad"}, {"git_commit": "36773ba49da568d8" + "0" * 24}
    assert differences(stored, now) == ["git_commit: 8c17a7885651 → 36773ba49da5"]
    assert differences({"kernel_isa": None}, {"kernel_isa": "avx2/v5"}) == ["kernel_isa: None → avx2/v5"]


def test_grid_options_parse_and_refuse_bad_values():
    sweep = build_sweep(GridOptions(arch="mlp,cnn", bn="pre", lr="0.01,0.1,1", batch_size="16,128"), seeds=2)
    assert sweep.describe() == "2 arch × 3 lr × 2 batch_size × 2 seeds = 24 trials"
    assert {c.epochs for c in sweep.configs() if c.arch == "cnn"} == {10}
    torch_and_custom = build_sweep(GridOptions(bn_impl="custom,torch", fused=True))
    assert {(c.bn_impl, c.fused) for c in torch_and_custom.configs()} == {("custom", True), ("torch", False)}
    for options, message in ((GridOptions(lr="0.1,x"), "--lr: 'x' is not a number"),
                             (GridOptions(batch_size="1"), "--batch-size must be at least 2"),
                             (GridOptions(lr="0"), "--lr must be positive"),
                             (GridOptions(optimizer="sgd,lbfgs"), "--optimizer: unknown value lbfgs")):
        with pytest.raises(UsageError, match=message):
            build_sweep(options)


def test_bad_grid_value_is_one_line_and_exit_2(tmp_path):
    db = tmp_path / "never.db"
    result = invoke("train", "--lr", "0.1,-1", "--db", str(db))
    assert result.exit_code == 2 and "--lr must be positive" in result.output and "Traceback" not in result.output
    assert not db.exists()
