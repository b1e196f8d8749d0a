"""The CLI end to end on a small subset of the real Fashion-MNIST."""

from __future__ import annotations

import sqlite3

import pytest
from typer.testing import CliRunner

from bnrun.cli import app
from bnrun.run.provenance import kernel_build
from bnrun.store import Store
from bnrun.training import precision

runner = CliRunner()
SMOKE = ["--epochs", "1", "--train-subset", "2000"]


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory):
    """Two CNN trials with BN pre, trained once for the tests of this module."""
    db = tmp_path_factory.mktemp("e2e") / "e2e.db"
    result = invoke("train", "--arch", "cnn", "--bn", "pre", "--seeds", "2", *SMOKE, "--db", str(db))
    assert result.exit_code == 0, result.output
    return db


def test_train_makes_completed_rows_with_epochs_and_checkpoints(trained_store):
    store = Store(str(trained_store))
    runs = store.list_runs()
    assert [(r.id, r.status, r.arch, r.bn, r.seed) for r in runs] == [(1, "completed", "cnn", "pre", 0), (2, "completed", "cnn", "pre", 1)]
    for run in runs:
        assert len(store.epochs(run.id)) == 1
        assert len(store.load_checkpoint(run.id)) > 1000
        assert 0.5 < run.test_acc_population <= 1 and 0 < run.test_acc_running <= 1
        assert run.torch_version and run.python_version and run.host and run.pid > 0
        # the CLI's defaults: the fast path (bf16 for the CNN where the CPU has bf16 units), recorded as what ran
        expected = "bf16" if precision.bf16_unsupported("cpu") is None else "fp32"
        assert (run.precision, run.channels_last, run.fused, run.bn_path) == (expected, True, True, "fused-cpu")
        assert run.kernel_isa == kernel_build("fused-cpu")  # the build that ran, with its version
    store.close()


def test_eval_reproduces_stored_accuracy_exactly(trained_store):
    result = invoke("eval", "1", "--save", "--db", str(trained_store))
    assert result.exit_code == 0, result.output
    store = Store(str(trained_store))
    run, (evaluation,) = store.get_run(1), store.evaluations(1)
    assert evaluation.test_acc_population == run.test_acc_population
    assert evaluation.test_acc_running == run.test_acc_running
    assert evaluation.matches_stored
    store.close()


def test_population_statistics_describe_the_mirrored_training_distribution(trained_store):
    """Training flips at random, so the first BN layer's stored population statistics are the exact
    moments of its input over every training image and its mirror, not the images alone."""
    import torch

    from bnrun.training import data
    from bnrun.training.checkpoint import rebuild_model

    store = Store(str(trained_store))
    run = store.get_run(1)
    model, population = rebuild_model(run, store.load_checkpoint(1))
    store.close()
    images = data.load(None, 2000).train.images
    conv = model[0]
    with torch.no_grad(), precision.autocast(run.precision, "cpu"):  # the activations the trial's BN saw
        mirrored = conv(torch.cat([images, images.flip(3)])).double()
        plain = conv(images).double()
    tolerance = {"rtol": 1e-5, "atol": 1e-6}
    stored = population["1"]
    torch.testing.assert_close(stored["mean"].double(), mirrored.mean((0, 2, 3)), **tolerance)
    torch.testing.assert_close(stored["var"].double(), mirrored.var((0, 2, 3)), **tolerance)
    assert not torch.allclose(stored["var"].double(), plain.var((0, 2, 3)), rtol=1e-4, atol=1e-6)


def test_rerun_skips_completed_trials(trained_store):
    result = invoke("train", "--arch", "cnn", "--bn", "pre", "--seeds", "2", *SMOKE, "--db", str(trained_store))
    assert result.exit_code == 0, result.output
    assert "0 completed; 2 skipped" in result.output
    with sqlite3.connect(trained_store) as connection:
        assert connection.execute("select count(*) from runs").fetchone()[0] == 2


def test_the_sweep_summary_gives_each_kind_of_unfinished_trial_a_line_that_fits_80_columns():
    from types import SimpleNamespace

    from bnrun.cli.actions import sweep_summary

    result = SimpleNamespace(completed=[1, 2], skipped=[], elsewhere=[7], diverged=[3, 4], failed=[5])
    assert sweep_summary(result).splitlines() == [
        "2 completed; 0 skipped (already completed or diverged in the store)",
        "1 running elsewhere (runs 7)", "2 diverged (runs 3, 4)", "1 failed (runs 5)"]
    assert max(map(len, sweep_summary(result).splitlines())) <= 80


def test_a_trial_is_labelled_by_the_options_its_grid_varies():
    from bnrun.config import TrainConfig
    from bnrun.run.progress import brief_label, trial_label

    config = TrainConfig(arch="mlp", bn="pre", bn_impl="custom", fused=True, lr=0.1, batch_size=64)
    assert trial_label(config, 2) == "mlp bn=pre (custom+fused) seed=2"
    assert trial_label(config, 2, ("arch", "lr", "batch_size")) == "mlp bn=pre (custom+fused) lr=0.1 batch_size=64 seed=2"
    assert brief_label(config, 2, ("arch", "lr")) == "arch=mlp lr=0.1 seed=2"
    assert brief_label(config, 2) == trial_label(config, 2)


def test_the_trials_bar_keeps_its_bar_and_times_at_80_columns_beside_a_long_label():
    from rich.console import Console

    from bnrun.config import TrainConfig
    from bnrun.run.progress import RichReporter

    console = Console(width=80, record=True, force_terminal=True)
    reporter = RichReporter(console)
    varied = ("lr", "batch_size", "label_smoothing", "weight_decay")
    reporter.sweep_started(16, "16 trials", varied)
    reporter.trial_started(7, TrainConfig(lr=0.1, batch_size=64, label_smoothing=0.1, weight_decay=1e-4), 0)
    reporter.progress.stop()
    console.print(reporter.progress.make_tasks_table(reporter.progress.tasks))
    bar = [line for line in console.export_text().splitlines() if line.startswith("trials")][-1]
    assert len(bar) <= 80 and "━" in bar and bar.rstrip().endswith("-:--:--"), bar
    assert "run 7: lr=0.1 batch_size=64" in bar and "…" in bar, bar


def test_a_ctrl_c_while_the_epoch_bar_is_replaced_still_ends_in_one_interrupted_line(monkeypatch):
    """A Ctrl-C that landed between removing the last epoch's bar and adding the next one left the removed bar's id
    behind, and trial_finished removed it again: a KeyError's traceback where "interrupted" belongs."""
    from rich.console import Console

    from bnrun.config import TrainConfig
    from bnrun.run.progress import RichReporter

    console = Console(width=80, record=True)
    reporter = RichReporter(console)
    reporter.sweep_started(1)
    reporter.trial_started(6, TrainConfig(arch="cnn", bn="post"), 2)
    reporter.epoch_started(1, 4, 10)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(reporter.progress, "add_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reporter.epoch_started(2, 4, 10)
    reporter.trial_finished(6, "interrupted", None, "interrupted by the user (SIGINT/SIGTERM)")
    reporter.sweep_finished()
    assert "interrupted run 6: cnn bn=post (custom) seed=2: interrupted by the user" in console.export_text()


def test_runs_and_show(trained_store):
    listed = invoke("runs", "--arch", "cnn", "--status", "completed", "--db", str(trained_store))
    assert listed.exit_code == 0 and "2 runs" in listed.output and "all: arch=cnn, bn=pre" in listed.output
    one = invoke("runs", "--run-id", "1", "--db", str(trained_store))  # no column of options: they are below
    assert one.exit_code == 0 and "1 run" in one.output and "options: arch=cnn, bn=pre" in one.output
    shown = invoke("show", "1", "--db", str(trained_store))
    assert shown.exit_code == 0 and "epochs" in shown.output and "config_key" not in shown.output
    assert "config_key" in invoke("show", "1", "--all", "--db", str(trained_store)).output


def test_an_empty_listing_says_what_would_list_something(trained_store, tmp_path):
    import shutil

    nothing = invoke("runs", "--where", "lr=7", "--db", str(trained_store))
    assert nothing.exit_code == 3 and "no run matches these filters (of 2 in the store;" in nothing.output
    assert "bnrun runs lists the others" in invoke("runs", "--deleted", "--db", str(trained_store)).output
    copy = shutil.copy(trained_store, tmp_path / "purged.db")
    assert invoke("delete", "1", "2", "--purge", "--yes", "--db", str(copy)).exit_code == 0
    empty = invoke("runs", "--db", str(copy))
    assert empty.exit_code == 3 and "the store holds no runs; train some first" in empty.output


def test_show_says_whether_a_runs_weights_are_kept(trained_store, tmp_path):
    import shutil

    assert "kept, " in invoke("show", "1", "--db", str(trained_store)).output
    copy = shutil.copy(trained_store, tmp_path / "light.db")
    assert invoke("delete", "1", "--checkpoints", "--yes", "--db", str(copy)).exit_code == 0
    assert "not kept (bnrun eval and export model need them)" in invoke("show", "1", "--db", str(copy)).output


def test_eval_unknown_run_is_one_line(trained_store):
    result = invoke("eval", "--run-id", "99", "--db", str(trained_store))
    assert result.exit_code == 2
    assert "no run with id 99" in result.output and "Traceback" not in result.output


def test_same_seed_same_initial_weights_across_placements():
    import torch

    from bnrun.training.models import build_model

    def initial(bn, impl="custom"):
        torch.manual_seed(5)
        return {k: v for k, v in build_model("cnn", bn, impl).state_dict().items() if "running" not in k and "num_batches" not in k}

    weights = [k for k in initial("none") if k.endswith("weight")]
    pre, post, none, ref = initial("pre"), initial("post"), initial("none"), initial("pre", "torch")
    conv_and_linear = [torch.cat([v.flatten() for v in d.values() if v.dim() > 1]) for d in (pre, post, none, ref)]
    for other in conv_and_linear[1:]:
        torch.testing.assert_close(conv_and_linear[0], other, rtol=0, atol=0)
    assert weights


def test_fused_training_is_the_default_and_matches_eager(tmp_path):
    """The fused path is the default, is recorded as the path that ran, and trains like the eager
    path (`--no-fused`: same seed, same batches; the layers agree to float rounding)."""
    from conftest import bnrun_in_process

    common = ["train", "--arch", "mlp", "--bn", "pre", "--seed", "0", "--device", "cpu", *SMOKE]
    fused = bnrun_in_process(*common, "--db", str(tmp_path / "fused.db"))
    assert fused.returncode == 0, fused.stderr
    assert invoke(*common, "--no-fused", "--db", str(tmp_path / "eager.db")).exit_code == 0
    (fast,), (eager,) = Store(str(tmp_path / "fused.db")).list_runs(), Store(str(tmp_path / "eager.db")).list_runs()
    assert (fast.status, fast.fused, eager.fused) == ("completed", True, False)
    assert (fast.bn_path, eager.bn_path) == ("fused-cpu", "eager")
    assert (fast.kernel_isa, eager.kernel_isa) == (kernel_build("fused-cpu"), None)  # recorded only where the kernel ran
    assert fast.train_loss == pytest.approx(eager.train_loss, rel=1e-3)


def test_no_checkpoint_trial_completes_and_eval_says_why_in_one_line(tmp_path):
    """A sweep may keep no weights (`--no-checkpoint`): the trial still completes with its metrics,
    eval answers in one line rather than a traceback (reproduce retrains, so it needs none)."""
    db = str(tmp_path / "light.db")
    result = invoke("train", "--arch", "mlp", "--bn", "pre", "--seed", "0", *SMOKE, "--no-checkpoint", "--db", db)
    assert result.exit_code == 0, result.output
    (run,) = Store(db).list_runs()
    assert run.status == "completed" and 0.5 < run.test_acc_population <= 1
    assert sqlite3.connect(db).execute("select count(*) from checkpoints").fetchone() == (0,)
    answer = invoke("eval", "--run-id", "1", "--db", db)
    assert answer.exit_code == 2, answer.output
    assert "run 1 has no checkpoint" in answer.output and "--no-checkpoint" in answer.output
    assert "Traceback" not in answer.output and len(answer.output.strip().splitlines()) == 1
