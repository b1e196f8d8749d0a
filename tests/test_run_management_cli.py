"""Run management as a user types it: compare, tag, delete/restore/purge, export, the runs
filters at 80 columns, train --dry-run, --version, eval's run argument, and the training options'
checks (the momentum rule under onecycle, ranges, options without effect)."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import time

import pytest
from typer.testing import CliRunner

from bnrun.cli import app
from bnrun.store import Store
from conftest import MLP_TRIALS, SHIPPED, bnrun_in_process

runner = CliRunner()
SMOKE = ["--epochs", "1", "--train-subset", "600"]
WIDE = {"COLUMNS": "80"}


def invoke(*args: str, **kwargs):
    return runner.invoke(app, list(args), **kwargs)


def fits(text: str, width: int = 80) -> None:
    """Every line within `width` columns, and no cell cut short."""
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= width, text


# -- compare ---------------------------------------------------------------------------------------


def test_compare_shows_the_configuration_diff_metrics_and_curves_at_80_columns(mlp_trials):
    result = bnrun_in_process("compare", "1", "2", "--db", str(mlp_trials), env=WIDE)
    assert result.returncode == 0, result.stderr
    fits(result.stdout)
    text = result.stdout
    assert re.search(r"lr\s+0\.05\s+0\.1\b", text)  # the option that differs
    assert "batch_size" not in text.split("same in both:")[0]  # an equal option only in the line below the table
    assert "test acc. (population)" in text and "pp" in text  # metrics side by side with the difference
    assert re.search(r"^\s*1\s+\d\.\d{3}", text, re.M)  # epoch 1's curve row
    assert "custom+fused" in text
    assert not re.search(r"\s-\d[\d.]*(?: pp| s)?\s*$", text, re.M)  # differences with a true minus sign
    loss = next(line for line in text.splitlines() if line.strip().startswith("final train loss"))
    assert re.fullmatch(r"[+−]\d\.\d{4}", loss.split()[-1]), loss  # in the loss column's 4 decimals


def test_compare_refuses_an_unknown_run(mlp_trials):
    result = bnrun_in_process("compare", "1", "99", "--db", str(mlp_trials))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "99" in result.stderr


# -- tag and note ------------------------------------------------------------------------------------


def test_tag_add_remove_note_and_filter(mlp_trials_copy):
    assert invoke("tag", "1", "2", "--add", "baseline", "--add", "sweep", "--db", str(mlp_trials_copy)).exit_code == 0
    result = invoke("tag", "2", "--remove", "sweep", "--note", "lr too high?", "--db", str(mlp_trials_copy))
    assert result.exit_code == 0, result.output
    assert "run 2: tags baseline; note: lr too high?" in result.stdout
    listed = bnrun_in_process("runs", "--tag", "sweep", "--db", str(mlp_trials_copy), env=WIDE)
    assert listed.returncode == 0 and re.findall(
        r"^\s*(\d+)\s+(?:completed|running|failed|diverged|interrupted)", listed.stdout, re.M
    ) == ["1"]
    shown = bnrun_in_process("show", "2", "--db", str(mlp_trials_copy), env=WIDE)
    assert "lr too high?" in shown.stdout and "baseline" in shown.stdout
    store = Store(str(mlp_trials_copy), read_only=True)
    assert store.get_run(2).note is None and store.get_run(2).user_note == "lr too high?"
    store.close()


def test_tag_refuses_a_bad_tag_and_changes_nothing(mlp_trials_copy):
    result = invoke("tag", "1", "--add", "two words", "--db", str(mlp_trials_copy))
    assert result.exit_code == 2 and "tag" in result.output
    both = invoke("tag", "1", "--add", "ok", "--remove", "ok", "--db", str(mlp_trials_copy))
    assert both.exit_code == 2 and "tag ok: given to --add and --remove" in both.output
    absent = invoke("tag", "1", "2", "--remove", "nosuch", "--db", str(mlp_trials_copy))
    assert absent.exit_code == 0 and "not tagged nosuch, left as they are: runs 1, 2" in absent.output
    store = Store(str(mlp_trials_copy), read_only=True)
    assert store.labels([1])[1].tags == ()
    store.close()


# -- delete, restore, purge ----------------------------------------------------------------------------


def report_ids(db) -> list[str]:
    result = bnrun_in_process("report", "--format", "json", "--db", str(db))
    assert result.returncode == 0, result.stderr
    return sorted(str(run_id) for group in json.loads(result.stdout)["groups"] for run_id in group["run_ids"])


def runs_ids(*args: str) -> list[str]:
    result = bnrun_in_process("runs", *args, env=WIDE)
    assert result.returncode == 0, result.stderr
    return re.findall(r"^\s*(\d+)\s+(?:completed|running|failed|diverged|interrupted)", result.stdout, re.M)


def test_delete_checkpoints_keeps_the_runs_and_shrinks_the_store(mlp_trials_copy):
    db = str(mlp_trials_copy)
    size = mlp_trials_copy.stat().st_size
    with sqlite3.connect(db) as connection:
        kept = connection.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
    assert kept >= 2
    assert invoke("delete", "--checkpoints", "--purge", "1", "--yes", "--db", db).exit_code == 2
    result = invoke("delete", "--checkpoints", "1", "--yes", "--db", db)
    assert result.exit_code == 0 and "removed 1 checkpoint of 1 run" in result.stdout
    assert mlp_trials_copy.stat().st_size < size  # compacted
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT count(*) FROM checkpoints").fetchone()[0] == kept - 1
    assert invoke("show", "1", "--db", db).exit_code == 0  # the run, its curves and metrics stay
    answer = invoke("eval", "1", "--db", db)
    assert answer.exit_code == 2 and "delete --checkpoints" in answer.stderr
    assert invoke("eval", "2", "--db", db).exit_code == 0


def test_delete_without_a_terminal_needs_yes(mlp_trials_copy):
    result = invoke("delete", "1", "--db", str(mlp_trials_copy))
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "--yes" in result.output
    assert runs_ids("--db", str(mlp_trials_copy)) == ["3", "2", "1"]  # newest first, piped or not


def test_soft_delete_hides_the_run_until_restored(mlp_trials_copy):
    before = report_ids(mlp_trials_copy)
    result = invoke("delete", "1", "--yes", "--db", str(mlp_trials_copy))
    assert result.exit_code == 0, result.output
    assert runs_ids("--db", str(mlp_trials_copy)) == ["3", "2"]
    assert runs_ids("--deleted", "--db", str(mlp_trials_copy)) == ["1"]
    assert "1" not in report_ids(mlp_trials_copy)
    again = invoke("delete", "1", "2", "--yes", "--db", str(mlp_trials_copy))  # run 1 is deleted already
    assert again.output.splitlines() == ["deleted runs 2; bring them back with: bnrun restore 2",
                                         "already deleted, left as they are: runs 1"]
    assert invoke("restore", "2", "--db", str(mlp_trials_copy)).exit_code == 0
    assert invoke("restore", "1", "--db", str(mlp_trials_copy)).exit_code == 0
    assert runs_ids("--db", str(mlp_trials_copy)) == ["3", "2", "1"] and report_ids(mlp_trials_copy) == before


def test_purge_removes_the_run_and_everything_it_had(mlp_trials_copy):
    assert invoke("tag", "1", "--add", "gone", "--db", str(mlp_trials_copy)).exit_code == 0
    result = invoke("delete", "1", "--purge", "--yes", "--db", str(mlp_trials_copy))
    assert result.exit_code == 0, result.output
    connection = sqlite3.connect(mlp_trials_copy)
    for table in ("runs", "epochs", "checkpoints", "evaluations", "diagnostics", "tags"):
        column = "id" if table == "runs" else "run_id"
        assert connection.execute(f"SELECT count(*) FROM {table} WHERE {column} = 1").fetchone() == (0,), table
    assert connection.execute("SELECT count(*) FROM runs").fetchone() == (2,)
    connection.close()


def test_a_running_trial_is_never_deleted(mlp_trials_copy):
    store = Store(str(mlp_trials_copy))
    fields = {
        name: getattr(store.get_run(1), name)
        for name in (
            "arch",
            "bn",
            "bn_impl",
            "fused",
            "epochs",
            "batch_size",
            "lr",
            "momentum",
            "weight_decay",
            "optimizer",
            "schedule",
            "augment",
            "train_subset",
            "device",
            "bnrun_version",
            "torch_version",
            "python_version",
        )
    }
    running = store.claim_run({**fields, "seed": 7}, "running-key", "{}").run_id  # held by this (live) process
    store.close()
    for extra in ([], ["--purge"]):
        result = invoke("delete", str(running), *extra, "--yes", "--db", str(mlp_trials_copy))
        assert result.exit_code == 2 and "running" in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert runs_ids("--status", "running", "--db", str(mlp_trials_copy)) == [str(running)]


# -- export --------------------------------------------------------------------------------------------


def test_export_runs_as_csv_and_json(mlp_trials, tmp_path):
    result = bnrun_in_process("export", "runs", "--format", "csv", "--where", "lr=0.1", "--db", str(mlp_trials))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["id"] for row in rows] == ["3", "2"] and {row["lr"] for row in rows} == {"0.1"}
    target = tmp_path / "runs.json"
    written = bnrun_in_process("export", "runs", "--format", "json", "--output", str(target), "--db", str(mlp_trials))
    assert written.returncode == 0 and written.stderr == f"wrote {target} (3 runs)\n"
    records = json.loads(target.read_text())
    assert [r["id"] for r in records] == [3, 2, 1] and records[-1]["status"] == "completed"
    assert isinstance(records[0]["test_acc_population"], float) and records[0]["tags"] == []


def test_export_epochs(mlp_trials, tmp_path):
    result = bnrun_in_process("export", "epochs", "1", "2", "--db", str(mlp_trials))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(row["run_id"], row["epoch"]) for row in rows] == [("1", "1"), ("2", "1")]
    target = tmp_path / "epochs.csv"
    written = bnrun_in_process("export", "epochs", "1", "2", "--output", str(target), "--db", str(mlp_trials))
    assert written.stderr == f"wrote {target} (2 epochs of 2 runs)\n" and target.read_text() == result.stdout
    assert (
        json.loads(bnrun_in_process("export", "epochs", "1", "--format", "json", "--db", str(mlp_trials)).stdout)[0]["val_acc"]
        > 0
    )


def test_exported_model_loads_with_weights_only_and_gives_the_same_logits(mlp_trials, tmp_path):
    import torch

    from bnrun.training.checkpoint import load_population, rebuild_model
    from bnrun.training.models import build_model

    target = tmp_path / "model.pt"
    result = bnrun_in_process("export", "model", "2", "--output", str(target), "--db", str(mlp_trials))
    assert result.returncode == 0, result.stderr
    saved = torch.load(target, weights_only=True)
    model = build_model(**saved["model"])
    model.load_state_dict(saved["state_dict"])
    store = Store(str(mlp_trials), read_only=True)
    run = store.get_run(2)
    reference, population = rebuild_model(run, store.load_checkpoint(2))
    store.close()
    assert saved["test_acc_percent"] == 100 * run.test_acc_population  # percent, as every view gives it
    load_population(reference, population)
    x = torch.randn(16, 1, 28, 28)
    torch.testing.assert_close(model.eval()(x), reference.eval()(x), rtol=0, atol=0)
    assert saved["config"]["lr"] == 0.1 and saved["run_id"] == 2


# -- runs: filters, sort, limit, 80 columns --------------------------------------------------------------


def test_runs_filters_sort_and_limit_fit_80_columns(mlp_trials):
    result = bnrun_in_process("runs", "--db", str(mlp_trials), env=WIDE)
    assert result.returncode == 0, result.stderr
    fits(result.stdout)
    assert re.search(r"\blr\b", result.stdout)  # lr varies among the listed runs: a column
    assert runs_ids("--where", "lr=0.1", "--db", str(mlp_trials)) == ["3", "2"]
    assert runs_ids("--run-id", "1-2", "--db", str(mlp_trials)) == ["2", "1"]
    assert runs_ids("--sort", "id", "--db", str(mlp_trials)) == ["1", "2", "3"]
    assert runs_ids("--sort", "-id", "--limit", "2", "--db", str(mlp_trials)) == ["3", "2"]
    assert runs_ids("--sort", "lr", "--db", str(mlp_trials))[0] == "1"
    only = bnrun_in_process("runs", "--where", "lr=0.1", "--db", str(mlp_trials), env=WIDE)
    fits(only.stdout)
    bad = bnrun_in_process("runs", "--sort", "nonsense", "--db", str(mlp_trials))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


# -- show ------------------------------------------------------------------------------------------------


def test_show_is_formatted_and_hides_internal_fields(mlp_trials):
    result = bnrun_in_process("show", "1", "--db", str(mlp_trials), env=WIDE)
    assert result.returncode == 0, result.stderr
    fits(result.stdout)
    assert "claim_token" not in result.stdout and "pid" not in result.stdout.split()
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\b(?!\.)", result.stdout)  # to the second
    assert re.search(r"test acc\. \(population\)\s+\d+\.\d\d %", result.stdout)
    assert "custom+fused" in result.stdout
    full = bnrun_in_process("show", "1", "--all", "--db", str(mlp_trials), env=WIDE)
    assert "claim_token" in full.stdout


# -- train --dry-run ---------------------------------------------------------------------------------------


def test_dry_run_prints_the_grid_and_creates_no_store(tmp_path):
    db = tmp_path / "never.db"
    result = bnrun_in_process(
        "train", "--arch", "mlp,cnn", "--lr", "0.05,0.1", "--seeds", "3", "--dry-run", "--db", str(db), env=WIDE
    )
    assert result.returncode == 0, result.stderr
    assert "12 trials" in result.stdout and "12 to run" in result.stdout
    fits(result.stdout)
    assert not db.exists() and list(tmp_path.iterdir()) == []


def test_dry_run_counts_what_the_store_holds(mlp_trials):
    result = bnrun_in_process(*MLP_TRIALS, "--lr", "0.05,0.1", "--seeds", "3", "--dry-run", "--db", str(mlp_trials))
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # the line names the store's path, so where it folds varies
    assert "3 completed" in text and "3 to run" in text


# -- --version, eval ---------------------------------------------------------------------------------------


def test_version():
    import importlib.metadata

    import bnrun

    result = bnrun_in_process("--version")
    assert result.returncode == 0
    assert f"bnrun {bnrun.__version__}" in result.stdout and importlib.metadata.version("torch") in result.stdout


def test_eval_takes_the_run_id_as_an_argument_with_progress_and_one_label(mlp_trials_copy):
    result = bnrun_in_process("eval", "1", "--save", "--db", str(mlp_trials_copy))
    assert result.returncode == 0, result.stderr
    assert "custom+fused" in result.stdout and "(custom)" not in result.stdout
    assert "evaluating" in result.stderr
    assert invoke("eval", "--run-id", "1", "--save", "--db", str(mlp_trials_copy)).exit_code == 0  # the option still works
    both = invoke("eval", "1", "--run-id", "2", "--db", str(mlp_trials_copy))
    assert both.exit_code == 2
    store = Store(str(mlp_trials_copy), read_only=True)
    assert len(store.evaluations(1)) == 2 and all(e.matches_stored for e in store.evaluations(1))
    store.close()
    shown = bnrun_in_process("show", "1", "--db", str(mlp_trials_copy), env=WIDE)
    assert "evaluations" in shown.stdout
    fits(shown.stdout)


# -- training options: the momentum rule, ranges, options without effect --------------------------------------


def test_default_onecycle_cycles_momentum_between_085_and_095():
    import torch

    from bnrun.config import TrainConfig
    from bnrun.training.loop import make_optimizer, make_scheduler

    for momentum, low, high in ((0.9, 0.85, 0.95), (0.5, 0.45, 0.55)):
        model = torch.nn.Linear(2, 2)
        optimizer = make_optimizer(TrainConfig(momentum=momentum), model)
        scheduler = make_scheduler(TrainConfig(momentum=momentum), optimizer, 10)
        seen = []
        for _ in range(100):
            seen.append(optimizer.param_groups[0]["momentum"])
            optimizer.step()
            scheduler.step()
        assert min(seen) == pytest.approx(low) and max(seen) == pytest.approx(high)
        if momentum == 0.9:
            assert (min(seen), max(seen)) == (0.85, 0.95)  # bit for bit today's cycle: stored trials keep their meaning


def test_momentum_changes_training_under_onecycle(tmp_path):
    db = tmp_path / "m.db"
    result = invoke("train", "--arch", "mlp", "--momentum", "0.5,0.9", *SMOKE, "--db", str(db))
    assert result.exit_code == 0, result.output
    store = Store(str(db), read_only=True)
    a, b = store.list_runs()
    store.close()
    assert (a.momentum, b.momentum) == (0.5, 0.9)
    assert a.train_loss != b.train_loss


@pytest.mark.parametrize(
    "args, words",
    [
        (["--lr", "inf"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--lr", "0"], "--lr"),
        (["--momentum", "1"], "--momentum"),
        (["--momentum", "1.5"], "--momentum"),
        (["--momentum", "-0.1"], "--momentum"),
        (["--momentum", "0.96"], "onecycle"),
        (["--weight-decay", "inf"], "--weight-decay"),
        (["--weight-decay", "nan"], "--weight-decay"),
        (["--optimizer", "adam", "--momentum", "0.5"], "--momentum"),
        (["--arch", "mlp", "--channels-last"], "--channels-last"),
        (["--bn", "none", "--fused"], "--fused"),
        (["--seeds", "100000000"], "--yes"),
        (["--seeds", "5001", "--arch", "mlp,cnn"], "--yes"),
    ],
)
def test_training_options_out_of_range_or_without_effect_are_refused(tmp_path, args, words):
    db = tmp_path / "refused.db"
    started = time.monotonic()
    result = bnrun_in_process("train", *args, "--db", str(db))
    assert time.monotonic() - started < 20
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert not db.exists()


def test_momentum_help_tells_what_runs():
    result = bnrun_in_process("train", "--help", env=WIDE)
    assert "0.85" in result.stdout and "Nesterov" in result.stdout


def test_large_grid_is_counted_not_built(tmp_path):
    """A grid above the limit passes with --yes; --dry-run counts it without materializing it."""
    result = bnrun_in_process("train", "--seeds", "20000", "--yes", "--dry-run", "--db", str(tmp_path / "x.db"))
    assert result.returncode == 0, result.stderr
    assert "20000 trials" in result.stdout.replace(",", "")


def test_runs_of_the_shipped_store_fit_80_columns():
    """Hundreds of runs varying in many options: the telling ones as columns, the rest named below."""
    from conftest import REPO

    result = bnrun_in_process("runs", "--db", str(REPO / "bnrun.db"), env=WIDE)
    assert result.returncode == 0, result.stderr
    fits(result.stdout)
    assert "also varying" in result.stdout


def test_a_final_metrics_values_and_their_differences_share_its_decimals():
    """compare printed seconds per epoch as 29.0 s beside a difference of −0.03 s."""
    from bnrun.analysis.comparison import FINAL_METRICS, difference, value_text

    def decimals(text: str) -> int:
        return len(text.split()[0].split(".")[1])

    for _, _, kind in FINAL_METRICS:
        assert decimals(value_text(kind, 0.123456)) == decimals(difference(kind, 0.1, 0.123456)), kind


def test_a_trial_without_bn_is_labelled_without_an_implementation():
    """Training's progress, eval's title and reproduce's line name a run as the report does: bn=none has no
    implementation to name (the run stores bn_impl's default all the same)."""
    from bnrun.config import TrainConfig, bn_text
    from bnrun.run.progress import trial_label

    assert trial_label(TrainConfig(arch="mlp", bn="none"), 0) == "mlp bn=none seed=0"
    assert trial_label(TrainConfig(arch="mlp", bn="pre", fused=True), 1) == "mlp bn=pre (custom+fused) seed=1"
    assert bn_text("none", "torch", False) == "bn=none"


def test_show_names_the_fields_a_run_did_not_record_in_one_row():
    """A CPU run's CUDA fields took a row of — each; --all still gives every field a row."""
    shown = bnrun_in_process("show", "12", "--db", str(SHIPPED), env={"COLUMNS": "80"}).stdout
    assert re.search(r"not recorded\s+gpu_name, cuda_version", shown) and not re.search(r"cuda_version\s+—", shown)
    assert "train_subset" in shown  # an option's none is a value, not a field left unrecorded
    every = bnrun_in_process("show", "12", "--all", "--db", str(SHIPPED), env={"COLUMNS": "80"}).stdout
    assert re.search(r"cuda_version\s+—", every) and "not recorded" not in every
