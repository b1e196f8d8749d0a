"""Aggregation on hand-made rows, the five formats, LaTeX that compiles, and the plot."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import struct
import subprocess
from dataclasses import replace
from datetime import datetime

import pytest
from typer.testing import CliRunner

from bnrun.analysis import latex, machine
from bnrun.analysis.grouping import RunFilter, build_report
from bnrun.analysis.stats import holm_adjust, paired_t_test, summarize
from bnrun.analysis.styles import Style
from bnrun.analysis.texts import comparison_lines
from bnrun.cli import app
from bnrun.errors import ExitCode, UsageError
from bnrun.requests.parsing import parse_run_ids, parse_where
from bnrun.store import EpochRecord, FinalMetrics, RunRecord, Store
from conftest import SHIPPED

runner = CliRunner()


def make_run(run_id, arch="cnn", bn="pre", impl="custom", seed=0, status="completed", acc=0.9, **extra) -> RunRecord:
    values = dict(
        id=run_id, status=status, arch=arch, bn=bn, bn_impl=impl, fused=False, seed=seed, epochs=10, batch_size=128,
        lr=0.05, momentum=0.9, weight_decay=5e-4, optimizer="sgd", schedule="onecycle", augment=True, train_subset=None,
        device="cpu", config_key="k", config_json="{}", started_at=datetime(2026, 11, 1), ended_at=None, heartbeat_at=None,
        duration_s=100.0, epochs_completed=10, train_loss=0.2, train_acc=0.95, val_acc=acc, best_val_acc=acc,
        test_loss_running=0.3, test_acc_running=None if acc is None else acc - 0.001, test_loss_population=0.3, test_acc_population=acc,
        note=None, bnrun_version="0", torch_version="0", python_version="3", git_commit=None, host="h", pid=1, grid_seeds=3,
    )
    values.update(extra)
    return RunRecord(**values)


def sample_runs() -> list[RunRecord]:
    runs, next_id = [], 1
    accuracies = {("pre", "custom"): [0.92, 0.93, 0.94], ("post", "custom"): [0.91, 0.915, 0.93], ("none", "custom"): [0.90, 0.90, 0.91]}
    for (bn, impl), values in accuracies.items():
        for seed, acc in enumerate(values):
            runs.append(make_run(next_id, bn=bn, impl=impl, seed=seed, acc=acc))
            next_id += 1
    runs.append(make_run(next_id, bn="pre", seed=3, status="diverged", acc=None))
    runs.append(make_run(next_id + 1, bn="post", seed=3, status="failed", acc=None))
    runs.append(make_run(next_id + 2, arch="mlp", bn="pre", seed=0, acc=0.895))
    return runs


def test_groups_means_stds_and_exclusions():
    report = build_report(sample_runs())
    by_label = {g.label(): g for g in report.groups}
    pre = by_label["cnn bn=pre (custom)"].stats["test_acc_population"]
    assert pre.n == 3 and pre.mean == pytest.approx(0.93) and pre.std == pytest.approx(0.01)
    post = by_label["cnn bn=post (custom)"].stats["test_acc_population"]
    assert post.mean == pytest.approx((0.91 + 0.915 + 0.93) / 3)
    assert post.std == pytest.approx(math.sqrt(sum((v - post.mean) ** 2 for v in (0.91, 0.915, 0.93)) / 2))
    assert report.excluded == {"diverged": 1, "failed": 1}
    mlp = by_label["mlp bn=pre (custom)"].stats["test_acc_population"]
    assert mlp.n == 1 and mlp.std is None  # n=1: no sample std
    assert report.best == {"cnn": by_label["cnn bn=pre (custom)"].key, "mlp": by_label["mlp bn=pre (custom)"].key}
    assert report.varying == ()


def test_the_comparisons_heading_counts_the_tested_or_says_why_none_is():
    from bnrun.analysis.texts import comparisons_heading

    tested = build_report(sample_runs()).comparisons
    assert "corrected over the 3 comparisons with a test" in comparisons_heading(tested)
    one_seed = [make_run(1, bn="pre", acc=0.92), make_run(2, bn="post", acc=0.91)]
    untested = build_report(one_seed).comparisons
    assert untested and all(c.test.p_value is None for c in untested)
    assert "no p-values: a paired test needs two or more seeds a side" in comparisons_heading(untested)


def test_hyperparameters_that_differ_split_groups_and_show():
    runs = [make_run(1, seed=0), make_run(2, seed=1), make_run(3, seed=0, lr=0.1)]
    report = build_report(runs)
    assert len(report.groups) == 2 and report.varying == ("lr",)


def test_filters():
    runs = sample_runs()
    assert {g.value("arch") for g in build_report(runs, run_filter=RunFilter(archs=("mlp",))).groups} == {"mlp"}
    only = build_report(runs, run_filter=RunFilter(run_ids=parse_run_ids("1-3")))
    assert [len(g.runs) for g in only.groups] == [3]
    assert build_report(runs, run_filter=RunFilter(since=datetime(2027, 1, 1))).groups == ()
    assert parse_run_ids("1-3, 7") == frozenset({1, 2, 3, 7})


def test_where_filters_on_any_option_as_spelled_on_the_command_line():
    runs = [make_run(1, lr=0.1), make_run(2, lr=0.05, epochs=20), make_run(3, lr=0.1, train_subset=10000, augment=False)]

    def kept(*conditions: str) -> list[int]:
        return [r.id for r in runs if RunFilter(where=parse_where(list(conditions))).accepts(r)]

    assert kept("lr=1e-1") == [1, 3] and kept("epochs=20") == [2] and kept("lr=0.1", "train-subset=none") == [1]
    assert kept("augment=false") == [3] and kept("arch=cnn") == [1, 2, 3] and kept("arch=mlp") == []
    assert kept("augment=no") == [3] and kept("augment=yes") == [1, 2]  # as option_text prints a switch
    assert kept("lr=0.05,0.1") == [1, 2, 3] and kept("lr=0.05,0.1", "lr=0.1,0.3") == [1, 3]
    for bad in ("lr", "lr=", "speed=3", "lr=abc", "augment=maybe", "epochs=1.5", "arch=resnet", "lr=none",
                "lr=0.1,,0.2", "lr=0.1,", "lr=٠.١", "epochs=１０"):
        with pytest.raises(UsageError, match="--where"):
            parse_where([bad])
    with pytest.raises(UsageError, match="contradictory"):
        parse_where(["epochs=10", "epochs=20"])


def test_comparisons_name_the_setting_they_were_made_at():
    """In a grid, every comparison says which values of the varying options it pairs."""
    runs = [make_run(i + 1, bn=bn, lr=lr, seed=seed, acc=0.9 + 0.001 * i)
            for i, (bn, lr, seed) in enumerate((b, l, s) for b in ("pre", "post") for l in (0.01, 0.1) for s in range(3))]
    report = build_report(runs)
    assert sorted(c.setting for c in report.comparisons) == ["lr=0.01", "lr=0.1"]
    assert {line.split(":")[0] for line in comparison_lines(report.comparisons)} == {
        "cnn bn=pre (custom) − cnn bn=post (custom) at lr=0.01", "cnn bn=pre (custom) − cnn bn=post (custom) at lr=0.1"}
    assert build_report(runs[:3] + runs[6:9]).comparisons[0].setting == ""  # one setting: nothing to name


def test_paired_comparisons_use_shared_seeds():
    report = build_report(sample_runs())
    pre_post = next(c for c in report.comparisons if c.a == "cnn bn=pre (custom)" and c.b == "cnn bn=post (custom)")
    assert pre_post.seeds == (0, 1, 2)
    assert pre_post.test.mean_diff == pytest.approx(((0.92 - 0.91) + (0.93 - 0.915) + (0.94 - 0.93)) / 3)
    assert pre_post.test.verdict().startswith("n=3:")


def test_fused_groups_are_compared_with_their_partners():
    """On the fused default path: pre − post on the same path, BN − none, and custom − torch
    (whose rows are never fused) are all reported, each paired by seed."""
    runs, next_id = [], 1
    for bn, impl, fused in (("pre", "custom", True), ("post", "custom", True), ("none", "custom", False), ("pre", "torch", False)):
        for seed in range(3):
            runs.append(make_run(next_id, bn=bn, impl=impl, seed=seed, acc=0.9 + 0.001 * next_id, fused=fused))
            next_id += 1
    labels = {(c.a, c.b) for c in build_report(runs).comparisons}
    assert labels == {("cnn bn=pre (custom+fused)", "cnn bn=post (custom+fused)"),
                      ("cnn bn=pre (custom+fused)", "cnn bn=none"), ("cnn bn=post (custom+fused)", "cnn bn=none"),
                      ("cnn bn=pre (custom+fused)", "cnn bn=pre (torch)")}


def test_statistics_helpers():
    assert summarize([]).mean is None and summarize([2.0]).std is None
    assert paired_t_test([1.0, 2.0], [1.0, 2.0]).p_value is None  # no variation: no test
    assert paired_t_test([1.0], [0.0]).verdict() == "n=1: cannot test"


def test_paired_t_test_against_hand_computed_values():
    # differences 1, 2, 3: mean 2, sd 1, se 1/√3, t = 2√3 = 3.4641 on 2 df;
    # two-sided p = 1 − |t|/√(t² + 2) for 2 df = 1 − 3.4641/3.7417 = 0.074180;
    # 95 % CI = 2 ± t_{0.975, 2}·se = 2 ± 4.302653/√3 = [−0.484138, 4.484138].
    test = paired_t_test([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    assert test.n == 3 and test.mean_diff == pytest.approx(2.0) and test.std_diff == pytest.approx(1.0)
    assert test.t == pytest.approx(2 * math.sqrt(3))
    assert test.p_value == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14), rel=1e-9)
    assert (test.ci_low, test.ci_high) == (pytest.approx(-0.484138, abs=1e-6), pytest.approx(4.484138, abs=1e-6))
    assert not test.too_few and "too few" in paired_t_test([2.0, 3.5], [1.0, 1.0]).verdict()


def test_holm_order_and_values():
    # sorted p: 0.01 (×4 = 0.04), 0.02 (×3 = 0.06), 0.03 (×2 = 0.06), 0.04 (×1, but monotone: 0.06); None stays out
    assert holm_adjust([0.03, None, 0.01, 0.04, 0.02]) == [
        pytest.approx(0.06), None, pytest.approx(0.04), pytest.approx(0.06), pytest.approx(0.06)]
    assert holm_adjust([0.5, 0.9]) == [pytest.approx(1.0), pytest.approx(1.0)]  # capped at 1


def test_report_applies_holm_over_all_its_comparisons():
    report = build_report(sample_runs())
    raw = [c.test.p_value for c in report.comparisons]
    assert [c.test.p_holm for c in report.comparisons] == [pytest.approx(p) if p is not None else None for p in holm_adjust(raw)]
    assert all(c.test.ci_low is not None for c in report.comparisons if c.test.p_value is not None)


def test_csv_and_json_parse_back():
    report = build_report(sample_runs())
    rows = list(csv.DictReader(io.StringIO(machine.report_csv(report))))
    pre = next(r for r in rows if r["arch"] == "cnn" and r["bn"] == "pre")
    assert float(pre["test_acc_population_mean"]) == pytest.approx(0.93)
    assert float(pre["test_acc_population_std"]) == pytest.approx(0.01)
    assert json.loads(pre["run_ids"]) == [1, 2, 3]
    payload = json.loads(machine.report_json(report))
    group = next(g for g in payload["groups"] if g["arch"] == "cnn" and g["bn"] == "none")
    assert group["n"] == 3 and group["test_acc_population_mean"] == pytest.approx(0.9033333, abs=1e-6)
    assert group["per_seed"]["2"]["test_acc_population"] == pytest.approx(0.91)
    assert payload["excluded"] == {"diverged": 1, "failed": 1}
    assert any(c["a"] == "cnn bn=pre (custom)" and c["b"] == "cnn bn=none" for c in payload["comparisons"])


def test_latex_cells_bold_and_escaping():
    text = latex.report_latex(build_report(sample_runs()))
    assert r"$\mathbf{93.00 \pm 1.00}$" in text
    assert r"\toprule" in text and r"\bottomrule" in text
    assert latex.latex_escape("a_b & 50% #1") == r"a\_b \& 50\% \#1"


@pytest.mark.skipif(shutil.which("pdflatex") is None and not os.environ.get("CI"),
                    reason="pdflatex comes with texlive-latex-recommended, which .ci/run installs; CI never skips this")
@pytest.mark.parametrize("shipped", [False, True], ids=["hand-made", "shipped-grid"])
def test_standalone_latex_compiles_fits_the_page_and_carries_comparisons_and_diagnostics(tmp_path, shipped):
    """The table, the paired comparisons with Holm and the diagnostics, with no line wider than the page."""
    source = tmp_path / "report.tex"
    if shipped:
        store = SHIPPED
        result = runner.invoke(app, ["report", "--format", "latex", "--standalone", "--run-id", "1-32,204-215",
                                     "--db", str(store), "--output", str(source)])
        assert result.exit_code == 0, result.output
    else:
        source.write_text(latex.report_latex(build_report(sample_runs()), standalone=True))
    text = source.read_text()
    assert "Holm" in text and r"\label{tab:bnrun-comparisons}" in text
    assert (r"\label{tab:bnrun-diagnostics}" in text) == shipped
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", source.name], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
    assert (tmp_path / "report.pdf").stat().st_size > 1000
    assert "Overfull \\hbox" not in (tmp_path / "report.log").read_text(errors="replace")


@pytest.mark.skipif(shutil.which("pdflatex") is None and not os.environ.get("CI"),
                    reason="pdflatex comes with texlive-latex-recommended, which .ci/run installs; CI never skips this")
@pytest.mark.slow  # pdflatex
def test_the_claims_latex_breaks_across_pages_within_the_width_with_true_minus_signs(tmp_path):
    """Every shipped claim in one longtable: it compiles, no line is wider than the page, its numbers are in
    math mode (a minus, not a hyphen), and an option's dashes in the report's notes stay two hyphens."""
    claims = runner.invoke(app, ["claims", "--format", "latex", "--db", str(SHIPPED)]).stdout
    report = runner.invoke(app, ["report", "--format", "latex", "--db", str(SHIPPED)]).stdout
    assert r"\begin{longtable}" in claims and "$-0.02$" in claims and "& -0." not in claims
    assert "-{}-where" in report and "-{}-all" in report
    (tmp_path / "claims.tex").write_text(claims)
    (tmp_path / "report.tex").write_text(report)
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\n\\usepackage[utf8]{inputenc}\n"
                                      "\\usepackage{booktabs,longtable,graphicx}\n\\begin{document}\n"
                                      "\\input{claims}\n\\input{report}\n\\end{document}\n")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "Overfull \\hbox" not in (tmp_path / "doc.log").read_text(errors="replace")


@pytest.fixture
def small_store(tmp_path):
    """A real store holding hand-made finished trials (no training needed)."""
    db = tmp_path / "report.db"
    store = Store(str(db))
    for run in sample_runs():
        fields = {k: getattr(run, k) for k in ("status", "arch", "bn", "bn_impl", "fused", "seed", "epochs", "batch_size", "lr",
                                                "momentum", "weight_decay", "optimizer", "schedule", "augment", "train_subset",
                                                "device", "bnrun_version", "torch_version", "python_version", "git_commit")}
        fields.pop("status")
        run_id = store.claim_run(fields, f"{run.arch}-{run.bn}-{run.bn_impl}", "{}").run_id
        for epoch in range(1, 4):
            store.add_epoch(run_id, EpochRecord(epoch, 1.0 / epoch, 0.8, 0.5, 0.8 + epoch / 100, 0.05, 1.0, 0.9))
        if run.status == "completed":
            acc = run.test_acc_population
            store.complete_run(run_id, FinalMetrics(0.2, 0.95, acc, acc, 0.3, acc - 0.001, 0.3, acc), b"x")
        else:
            store.end_run(run_id, run.status, "hand-made")
    store.close()
    return db


@pytest.mark.parametrize("fmt", ["table", "latex", "markdown", "csv", "json"])
def test_report_command_formats(small_store, tmp_path, fmt):
    output = tmp_path / f"out.{fmt}"
    args = ["report", "--db", str(small_store), "--format", fmt] + ([] if fmt == "table" else ["--output", str(output)])
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    text = result.output if fmt == "table" else output.read_text()
    assert "93.00" in text or "0.93" in text


def test_report_grid_completeness_and_flags(small_store):
    result = runner.invoke(app, ["report", "--db", str(small_store), "--format", "markdown", "--seeds", "4", "--all"])
    assert "3/4" in result.output and "1/4" in result.output
    assert "fewer than 3 completed trials: mlp bn=pre (custom)" in result.output
    assert "1 diverged" in result.output and "1 failed" in result.output


def test_report_on_empty_store_is_one_line_exit_3(tmp_path, isolated_store):
    """Nothing matched: one line on stderr with a hint, the empty selection's exit code, nothing on stdout."""
    Store(str(tmp_path / "empty.db")).close()
    Store(str(isolated_store)).close()
    result = runner.invoke(app, ["report", "--db", str(tmp_path / "empty.db")])
    assert result.exit_code == ExitCode.NOTHING_MATCHED and "bnrun train" in result.stderr and not result.stdout
    filtered = runner.invoke(app, ["report", "--arch", "mlp", "--bn", "post", "--by", "lr"])
    assert filtered.exit_code == ExitCode.NOTHING_MATCHED and filtered.stderr.startswith("bnrun: error: no completed trials in the store")
    assert len(filtered.stderr.strip().splitlines()) == 1


def test_report_bad_options_are_one_line(small_store):
    for args in (["--format", "pdf"], ["--metric", "speed"], ["--run-id", "a-b"], ["--since", "yesterday"],
                 ["--where", "lr"], ["--where", "speed=3"]):
        result = runner.invoke(app, ["report", "--db", str(small_store), *args])
        assert result.exit_code == 2 and "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_a_sensible_png(small_store, tmp_path):
    output = tmp_path / "curves.png"
    result = runner.invoke(app, ["plot", "--db", str(small_store), "--output", str(output)])
    assert result.exit_code == 0, result.output
    width, height = png_size(output)
    assert 800 <= width <= 3000 and 400 <= height <= 3000  # two archs: two rows of two panels
    assert output.stat().st_size > 20_000


def test_plot_on_empty_store_is_one_line_exit_3(tmp_path):
    Store(str(tmp_path / "none.db")).close()
    result = runner.invoke(app, ["plot", "--db", str(tmp_path / "none.db"), "--output", str(tmp_path / "x.png")])
    assert result.exit_code == ExitCode.NOTHING_MATCHED and "no completed trials in the store" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_group_label_for_replaced_run():
    run = replace(make_run(1), bn="none")
    assert build_report([run]).groups[0].label() == "cnn bn=none"


# -- figures: ticks that fit the data, a legend that hides nothing, the recipe in the caption -------------


@pytest.fixture
def drawn(monkeypatch):
    """The figures' (figure, title with its caption) instead of files."""
    from bnrun.analysis import figures

    saved = []
    monkeypatch.setattr(figures, "save", lambda figure, output, dpi, title, caption="": saved.append(
        (figure, f"{title}\n{caption}")) or output)
    return saved


def test_a_one_epoch_learning_curve_has_whole_epoch_ticks_a_clear_legend_and_its_recipe(drawn, tmp_path):
    from bnrun.analysis import figures

    runs = [make_run(i + 1, arch="mlp", bn=bn, seed=seed, epochs=1, epochs_completed=1, lr=0.1, acc=0.9 - i / 100)
            for i, (bn, seed) in enumerate((bn, seed) for bn in ("pre", "none") for seed in range(3))]
    epochs = {run.id: [EpochRecord(1, 0.4, 0.85, 0.45, run.val_acc, 0.1, 2.0, 1.5)] for run in runs}
    figures.plot_learning_curves(build_report(runs), epochs, tmp_path / "curves.png")
    figure, title = drawn[0]
    assert "off the default recipe: lr=0.1, epochs=1" in title
    figure.canvas.draw()
    for axis in figure.axes:
        ticks = [t for t in axis.get_xticks() if axis.get_xlim()[0] <= t <= axis.get_xlim()[1]]
        assert ticks == [1.0], ticks  # not 0.945 ... 1.050
    legend = figure.axes[-1].get_legend().get_window_extent()
    points = [axis.transData.transform(xy) for axis in figure.axes for line in axis.lines for xy in line.get_xydata()]
    assert points and not any(legend.contains(x, y) for x, y in points)


def test_a_log_axis_is_labelled_in_plain_decimals(drawn, tmp_path):
    from bnrun.analysis import figures

    figure, axis = figures.plt.subplots()
    axis.plot([1, 2], [0.08, 0.75])
    figures.log_scale(axis)
    figure.canvas.draw()
    labels = [t.get_text() for t in (*axis.get_yticklabels(), *axis.get_yticklabels(minor=True)) if t.get_text()]
    figures.plt.close(figure)
    assert {"0.1", "0.2", "0.4"} <= set(labels) and not any("10^" in label or "×" in label for label in labels), labels


@pytest.mark.parametrize("low, high", [(0.12, 0.85), (0.3, 0.9), (0.02, 3.0), (0.0011, 9.0), (3.0, 4000.0)])
def test_a_log_axis_is_labelled_along_its_whole_length(low, high):
    """A training loss from 0.12 to 0.85 once showed no label below 0.2: no stretch of a log axis, its ends
    included, runs past a quarter of its length without a label."""
    from bnrun.analysis import figures

    figure, axis = figures.plt.subplots()
    axis.plot([1, 2], [low, high])
    figures.log_scale(axis)
    figure.canvas.draw()
    bottom, top = axis.get_ylim()
    labelled = [t.get_position()[1] for t in (*axis.get_yticklabels(), *axis.get_yticklabels(minor=True))
                if t.get_text() and bottom <= t.get_position()[1] <= top]
    figures.plt.close(figure)
    at = sorted(math.log(value / bottom) / math.log(top / bottom) for value in labelled)  # 0 bottom, 1 top
    gaps = [b - a for a, b in zip([0.0, *at], [*at, 1.0])]
    assert bottom <= low and high <= top and max(gaps) <= 0.25, (labelled, gaps)


def test_plot_against_option_marks_diverged_and_chance_cells_at_their_own_value(drawn, tmp_path):
    """At lr=3 one line diverged and the other ended at chance: both marks stand at x=3, where the data's axis
    draws 3 (no lr that was not run), one above the other below the data, each with its count; the legend names
    each kind of mark once."""
    from bnrun.analysis import figures
    from bnrun.analysis.pivots import Cell, Pivot, PivotRow

    def cell(*values, diverged=0):
        return Cell(summarize(list(values)), diverged, len(values) + diverged, (), tuple(values))

    rows = (PivotRow({"arch": "mlp", "bn": "pre"}, {0.1: cell(0.88, 0.89, 0.9), 3.0: cell(diverged=3)}, 0.1),
            PivotRow({"arch": "mlp", "bn": "none"}, {0.1: cell(0.85, 0.86, 0.87), 3.0: cell(0.1, 0.1, 0.1)}, 0.1))
    pivot = Pivot("lr", "test_acc_population", (0.1, 3.0), ("arch", "bn"), rows, (), held={"epochs": 10})
    figures.plot_against_option(pivot, tmp_path / "lr.png", "test acc.", 100.0)
    figure, title = drawn[0]
    assert "off the default recipe: epochs=10" in title
    figure.canvas.draw()
    axis = figure.axes[0]
    marks = [line for panel in figure.axes for line in panel.lines if line.get_marker() in ("x", "v")]
    assert sorted(mark.get_marker() for mark in marks) == ["v", "x"]
    assert all(list(mark.get_xdata()) == [3.0] for mark in marks)
    at = [tuple(mark.get_transform().transform(mark.get_xydata())[0]) for mark in marks]
    assert [x for x, _ in at] == pytest.approx([axis.transData.transform((3.0, 50.0))[0]] * 2)
    assert len({y for _, y in at}) == 2 and all(y < axis.get_window_extent().y0 for _, y in at)
    assert sorted(text.get_text() for panel in figure.axes for text in panel.texts) == ["3/3", "3/3"]
    labels = [text.get_text() for text in axis.get_legend().get_texts()]
    assert "diverged (k/n trials)" in labels and any(label.startswith("chance level") for label in labels)


@pytest.fixture
def laid_out(monkeypatch):
    """The figures as saved (laid out, written), kept open instead of closed."""
    from bnrun.analysis import figures

    kept, close = [], figures.plt.close
    monkeypatch.setattr(figures.plt, "close", kept.append)
    yield kept
    for figure in kept:
        close(figure)


def test_a_legend_stands_beside_the_panels_and_covers_no_data(laid_out, tmp_path):
    """A depth plot's legend once covered a band that loc="best" does not see: whatever the lines do, every
    figure's legend lies outside each of its panels and inside the figure."""
    from bnrun.analysis import figures
    from bnrun.analysis.pivots import Cell, Pivot, PivotRow

    depths = (1, 2, 4, 8, 16, 32)

    def cells(*means):
        return {d: Cell(summarize([m - 0.01, m, m + 0.01]), 0, 3, (), ()) for d, m in zip(depths, means)}

    rows = tuple(PivotRow({"arch": "mlp", "bn": bn}, cells(*means), 0.1) for bn, means in
                 (("pre", (0.9, 0.2, 0.9, 0.2, 0.9, 0.2)), ("post", (0.2, 0.9, 0.2, 0.9, 0.2, 0.9)),
                  ("none", (0.5, 0.5, 0.9, 0.5, 0.5, 0.2))))
    figures.plot_against_option(Pivot("depth", "test_acc_population", depths, ("arch", "bn"), rows, ()),
                                tmp_path / "depth.png", "test acc.", 100.0)
    runs = [make_run(i + 1, arch=arch, bn=bn, seed=0) for i, (arch, bn) in
            enumerate((arch, bn) for arch in ("cnn", "mlp") for bn in ("pre", "post", "none"))]
    epochs = {run.id: [EpochRecord(e, 1 / e, 0.5 + e / 30, 1 / e, 0.5 + e / 30, 0.1, 2.0, 1.5) for e in (1, 2, 3)]
              for run in runs}
    figures.plot_learning_curves(build_report(runs), epochs, tmp_path / "curves.png")
    figures.plot_batch_stats([(f"bn={bn}", {2: [0.2 + k], 64: [0.9 - k], 512: [0.5]}, Style("#000")) for k, bn in
                              ((0.0, "pre"), (0.3, "post"))], tmp_path / "stats.png", {})
    assert len(laid_out) == 3
    for figure in laid_out:
        figure.canvas.draw()
        legends = [axis.get_legend().get_window_extent() for axis in figure.axes if axis.get_legend()]
        assert legends, figure.axes
        for legend in legends:
            assert not any(legend.overlaps(axis.get_window_extent()) for axis in figure.axes)
            assert figure.bbox.x0 <= legend.x0 and legend.x1 <= figure.bbox.x1


def test_the_batch_statistics_legend_counts_the_runs_evaluated():
    from bnrun.analysis.diagnostic_summaries import batch_stat_rows
    from bnrun.store import EvaluationRecord

    runs = [make_run(i + 1, seed=i) for i in range(5)]
    report = build_report(runs)
    evaluation = {"id": 1, "created_at": datetime(2026, 11, 2), "device": "cpu", "val_acc_running": 0.9,
                  "val_acc_population": 0.9, "test_loss_running": 0.3, "test_acc_running": 0.9,
                  "test_loss_population": 0.3, "test_acc_population": 0.9, "matches_stored": True,
                  "bnrun_version": "0", "batch_stats_json": json.dumps({"8": [0.4, 0.8], "32": [0.35, 0.88]})}
    evaluations = {run.id: [EvaluationRecord(run_id=run.id, **evaluation)] for run in runs[:3]}
    ((label, series, _),) = batch_stat_rows(report.groups, evaluations)
    assert label.endswith("(n=3)") and [len(values) for values in series.values()] == [3, 3]


def test_every_view_prints_a_p_value_alike():
    from bnrun.analysis.stats import p_text

    assert [p_text(p) for p in (None, 0.6751, 0.01789, 0.0012, 8.1e-05, 0.000124)] == \
        ["—", "0.68", "0.018", "0.0012", "8e-05", "1e-04"]


def test_a_band_on_a_log_axis_is_the_geometric_spread_and_stays_above_zero():
    from bnrun.analysis.figures import center_and_band

    centers, lows, highs = center_and_band([[0.01, 1.0, 100.0]], log=True)
    assert centers == pytest.approx([1.0]) and lows[0] > 0 and lows[0] * highs[0] == pytest.approx(1.0)
    means, lows, highs = center_and_band([[0.01, 1.0, 100.0]], log=False, bounds=(0.0, None))
    assert means == pytest.approx([101.01 / 3]) and lows == [0.0]


def test_the_png_and_the_web_view_draw_each_group_in_one_style(laid_out, tmp_path):
    """One visual grammar (analysis/styles.py): a group's hue is its placement, its dash and marker its
    implementation, in the learning curves that `bnrun plot` saves and in those the web view draws."""
    from matplotlib.colors import to_hex

    from bnrun.analysis import figures
    from bnrun.web import charts

    runs = [make_run(i + 1, arch="mlp", bn=bn, impl=impl, seed=0) for i, (bn, impl) in
            enumerate((("pre", "custom"), ("pre", "torch"), ("post", "custom"), ("none", "custom")))]
    epochs = {run.id: [EpochRecord(e, 1 / e, 0.5 + e / 30, 1 / e, 0.5 + e / 30, 0.1, 2.0, 1.5) for e in (1, 2, 3)]
              for run in runs}
    report = build_report(runs)
    figures.plot_learning_curves(report, epochs, tmp_path / "curves.png")
    drawn = {line.get_label().removesuffix(" (n=1)"): line for line in laid_out[0].axes[0].get_lines()}
    web = {label.removesuffix(" (n=1)"): style for label, style in charts.group_curves(report, epochs)[0].legend}
    assert len(drawn) == len(web) == 4
    for label, style in web.items():
        line = drawn[f"mlp {label}"]
        assert to_hex(line.get_color()) == style.color
        assert line.get_marker() == figures.MARKERS[style.marker]
        assert (line.get_linestyle() == "-") == (style.dash == "")
    colors = {label.split()[0]: style.color for label, style in web.items()}
    assert len(set(colors.values())) == 3  # one hue per placement: pre, post, none
