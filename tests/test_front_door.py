"""The front door: selections that narrow (a filter or a pivot shows one recipe, the default where it holds trials,
else the largest, names the recipes it left out with the --where that selects each, and fits one screen without
--all); one line for every output path that cannot be written; accuracies in percent; a listing of one screen."""

from __future__ import annotations

import shutil

from test_report import make_run
from typer.testing import CliRunner

from bnrun.analysis.grouping import SCREEN_ROWS, RunFilter, build_report, narrow
from bnrun.analysis.pivots import build_pivot
from bnrun.analysis.texts import footnotes, pivot_notes
from bnrun.cli import app
from conftest import REPO

runner = CliRunner()


def study() -> list:
    """A default-recipe grid (MLP, 20 epochs), a learning-rate sweep at 10 epochs and a 1-epoch 1,000-image study."""
    runs = []
    def add(**options) -> None:
        runs.append(make_run(len(runs) + 1, arch="mlp", fused=True, **options))
    for bn in ("pre", "post", "none"):
        for seed in range(3):
            add(bn=bn, seed=seed, epochs=20)
            for lr in (0.01, 0.05, 0.3):
                add(bn=bn, seed=seed, epochs=10, lr=lr, acc=0.8 + lr / 10)
            add(bn=bn, seed=seed, epochs=1, train_subset=1000, acc=0.7)
    return runs


def test_a_filter_keeps_the_default_recipe_and_names_the_others():
    report = build_report(study(), run_filter=RunFilter(archs=("mlp",)), narrowed=True)
    assert {(g.value("epochs"), g.value("lr")) for g in report.groups} == {(20, 0.05)}
    note = " ".join(report.left_out)
    assert "shown: the default recipe; left out: 36 of 45 trials, in 4 other recipes" in note
    assert "--where lr=0.01 --where epochs=10 (9 trials); --where epochs=10 (9 trials)" in note
    assert "and 1 more; --all shows every trial" in note
    one_epoch = build_report(study(), run_filter=RunFilter(where=(("epochs", (1, 20)),)), narrowed=True)
    assert "in 1 other recipe: --where train_subset=1000 (9 trials)" in one_epoch.left_out[0]  # epochs named


def test_without_the_default_the_largest_recipe_is_shown_and_its_options_named():
    runs = [run for run in study() if run.epochs != 20 and not (run.epochs == 1 and run.bn == "none")]
    report = build_report(runs, run_filter=RunFilter(where=(("lr", (0.05,)),)), narrowed=True)
    assert {g.value("epochs") for g in report.groups} == {10}
    assert "shown: the largest recipe" in report.left_out[0]
    assert any(line == "off the default recipe: epochs=10" for line in footnotes(report))
    one_epoch = build_report(runs, run_filter=RunFilter(where=(("epochs", (1,)),)), narrowed=True)
    assert any("epochs=1, train_subset=1000" in line for line in footnotes(one_epoch))


def test_a_pivot_shows_the_sweep_over_its_option_and_says_what_is_held():
    pivot = build_pivot(study(), "lr", narrowed=True)
    assert pivot.columns == (0.01, 0.05, 0.3)
    notes = " ".join(pivot_notes(pivot))
    assert "every other option held fixed at the default recipe but epochs=10" in notes
    assert "--where epochs=20" in notes and "--where epochs=1 --where train_subset=1000" in notes
    assert build_pivot(study(), "lr").columns == (0.01, 0.05, 0.3)  # --all: every trial, both recipes' columns
    assert len(build_pivot(study(), "lr").rows) > len(pivot.rows)


def test_one_recipe_is_not_narrowed_and_all_shows_every_trial():
    runs = [run for run in study() if run.epochs == 20]
    assert narrow(runs) == (runs, "")
    everything = build_report(study())
    assert len(everything.groups) == 3 * 5 and everything.left_out == ()


def test_a_report_shows_one_screen_of_groups_and_names_the_rest():
    runs = [make_run(i + 1, arch="mlp", bn="pre", seed=0, batch_size=8 * (i + 1)) for i in range(SCREEN_ROWS + 4)]
    report = build_report(runs, run_filter=RunFilter(where=(("batch_size", tuple(r.batch_size for r in runs)),)),
                          narrowed=True)
    assert len(report.groups) == SCREEN_ROWS
    assert f"{SCREEN_ROWS} of {SCREEN_ROWS + 4} groups shown" in report.left_out[-1]
    assert len(build_report(runs).groups) == SCREEN_ROWS + 4


def test_report_all_takes_filters():
    result = runner.invoke(app, ["report", "--all", "--arch", "mlp", "--db", "missing.db"])
    assert "--all applies only" not in result.output


def test_every_command_that_writes_a_file_fails_in_one_line(tmp_path):
    """One helper (bnrun.errors.writing) for every output path: a file in the way, an unwritable place,
    a full disk; exit 2, one line, no traceback."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cases = [
        (["plot", "--output", str(blocker / "x.png")], "a file is in the way"),
        (["plot", "--output", "/proc/x.png"], "cannot write"),
        (["plot", "--output", str(tmp_path / "missing" / "x.png")], "no directory"),
        (["report", "--output", str(tmp_path / "missing" / "r.txt")], "no directory"),
        (["report", "--output", str(blocker / "r.txt")], "a file is in the way"),
        (["export", "runs", "--output", "/proc/r.csv"], "cannot write"),
        (["export", "model", "1", "--output", "/proc/m.pt"], "cannot write"),
        (["export", "model", "1", "--output", "/dev/full"], "No space left on device"),
    ]
    db = tmp_path / "s.db"
    shutil.copyfile(REPO / "bnrun.db", db)
    for args, message in cases:
        result = runner.invoke(app, [*args, "--db", str(db)])
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output, (args, result.output)
    assert not (tmp_path / "missing").exists()


def test_export_gives_accuracies_in_percent_as_every_view():
    from bnrun.analysis.export import epoch_rows, run_rows
    from bnrun.store import EpochRecord

    run = make_run(1, acc=0.9021)
    (row,) = run_rows([run], {})
    assert row["test_acc_population"] == 90.21 and row["val_acc"] == 90.21 and row["lr"] == 0.05
    epoch = EpochRecord(epoch=1, train_loss=0.5, train_acc=0.8, val_loss=0.4, val_acc=0.85, lr=0.1, seconds=1.0,
                        train_seconds=1.0)
    assert epoch_rows({1: [epoch]})[0]["val_acc"] == 85.0


def test_runs_in_a_terminal_lists_one_screen_newest_first():
    from bnrun.requests.parsing import SCREEN_RUNS, FilterOptions, RunSelection, listing_query

    every = RunSelection(FilterOptions())

    terminal = listing_query(every, False, terminal=True, everything=False)
    assert (terminal.limit, terminal.sort) == (SCREEN_RUNS, "-id")
    assert listing_query(every, False, terminal=False, everything=False).limit is None
    assert listing_query(every, False, terminal=True, everything=True).limit is None


def test_a_train_that_would_skip_every_fused_trial_builds_no_kernel(tmp_path):
    """The kernel's build (30-60 s on a new machine) waits for a fused trial that will actually run."""
    from dataclasses import replace

    from bnrun.cli.actions import fused_trials_to_run
    from bnrun.config import SweepConfig
    from bnrun.store import Store

    db = tmp_path / "s.db"
    shutil.copyfile(REPO / "bnrun.db", db)
    stored = SweepConfig(axes=(("arch", ("mlp",)), ("bn", ("pre",))), seeds=(0,))
    stored = replace(stored, base=replace(stored.base, precision="fp32", fused=True))
    store = Store(str(db), read_only=True)
    try:
        assert not fused_trials_to_run(stored, store)  # run 1 holds it
        assert fused_trials_to_run(replace(stored, seeds=(97,)), store)
        assert not fused_trials_to_run(replace(stored, axes=(("arch", ("mlp",)), ("bn", ("none",))), seeds=(97,)), store)
    finally:
        store.close()


def test_pivots_keep_one_row_per_implementation_and_refuse_a_second_by(tmp_path):
    db = tmp_path / "s.db"
    shutil.copyfile(REPO / "bnrun.db", db)
    result = runner.invoke(app, ["report", "--by", "bn", "--arch", "mlp", "--db", str(db)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    rows = [line.split()[:2] for line in result.stdout.splitlines() if line.startswith("mlp ")]
    assert [row for row in rows if row[1] in ("custom", "custom+fused", "torch", "—")] == [["mlp", "custom+fused"],
                                                                                          ["mlp", "torch"]]
    twice = runner.invoke(app, ["report", "--by", "lr", "--by", "bn", "--db", str(db)])
    assert twice.exit_code == 2 and "--by given 2 times" in twice.stderr
