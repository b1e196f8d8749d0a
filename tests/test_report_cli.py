"""report, plot and eval as a user types them: tables that fit 80 columns, the default selection,
one line (exit 2) for every mistake, "nothing matched" as its own error, output paths, numbers in
numeric order, figures inside the metric's range, and stores and lock files nobody asked for."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3

import pytest
from typer.testing import CliRunner

from bnrun.analysis import figures
from bnrun.analysis.pivots import Cell, Pivot, PivotRow
from bnrun.analysis.stats import summarize
from bnrun.cli import app
from bnrun.errors import ExitCode, unknown_choice
from bnrun.store import Store
from conftest import SHIPPED, bnrun_in_process, run_bnrun

runner = CliRunner()
NARROW = {"COLUMNS": "80"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A copy of the shipped store (never written by these tests either)."""
    copy = tmp_path_factory.mktemp("study") / "study.db"
    shutil.copyfile(SHIPPED, copy)  # the store the checkout ships, whatever the study has added to it
    return copy


def fits(text: str, width: int = 80) -> None:
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= width, text


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output and not result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnrun: error: "), result.stderr
    return lines[0]


def invoke(*args: str, env: dict | None = None):
    return runner.invoke(app, list(args), env=env)


@pytest.mark.slow  # four `bnrun report` processes
def test_the_headline_fits_80_columns_when_piped(study):
    tables = []
    for args in (["report", "--run-id", "1-12"], ["report"], ["report", "--all"], ["report", "--by", "lr", "--arch", "mlp"]):
        result = run_bnrun(*args, "--db", str(study), env=NARROW, timeout=120)
        assert result.returncode == 0, result.stderr
        fits(result.stdout)
        tables.append(result.stdout)
    table = tables[0]  # report --run-id 1-12
    assert "93.19 ± 0.22" in table and "custom+fused" in table  # cells whole, labels as --where takes them
    assert "cnn: epochs=10, channels_last=yes; mlp: epochs=20, channels_last=no" in table  # as --where takes them


def test_piped_output_follows_columns(study):
    wide = run_bnrun("report", "--wide", "--run-id", "1-12", "--db", str(study), env={"COLUMNS": "200"})
    assert wide.returncode == 0 and max(len(line) for line in wide.stdout.splitlines()) > 80
    assert "diagnostics" in wide.stdout and "s / epoch" in wide.stdout


def test_the_default_report_is_the_default_recipe_with_holm_over_what_it_prints(study):
    """The 5-seed grid's groups (the sweeps left out, and said so), Holm over exactly the comparisons
    printed: the same numbers as the README's headline for the same groups."""
    import re

    result = invoke("report", "--db", str(study), env=NARROW)
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert re.search(r"shown: the default recipe; left out: [\d,]+ of [\d,]+ trials, in \d+ other recipes: --where ", text), text
    assert "--all shows every trial" in text
    tested = [line for line in result.stdout.splitlines() if re.search(r" − .*\] +[0-9.e-]+ +[0-9.e-]+ +\d+$", line)]
    assert f"corrected over the {len(tested)} comparisons with a test" in text and len(tested) >= 10
    grid = invoke("report", "--run-id", "1-32,204-215", "--db", str(study), env=NARROW).stdout
    mlp = "mlp pre (custom+fused) − none "
    assert next(row for row in tested if row.startswith(mlp)).split() in [row.split() for row in grid.splitlines()]


def test_every_group_label_is_unique(study):
    result = invoke("report", "--all", "--format", "markdown", "--db", str(study))
    assert result.exit_code == 0, result.output
    small = next(line for line in result.stdout.splitlines() if line.startswith("- fewer than 3"))
    labels = small.split(": ", 1)[1].split("; ")
    assert len(labels) == len(set(labels)) and all("lr=" in label for label in labels)


def test_batch_sizes_sort_as_numbers(study):
    filters = ["--arch", "mlp", "--where", "epochs=10", "--where", "lr=0.05", "--where", "depth=none", "--where",
               "width=none", "--where", "dropout=0", "--where", "ghost_batch=none", "--where", "train_subset=none",
               "--where", "study=none", "--db", str(study)]
    payload = json.loads(invoke("report", "--format", "json", "--all", *filters).stdout)
    sizes = [group["batch_size"] for group in payload["groups"] if group["bn"] == "pre"]
    assert sizes == [16, 32, 64, 128, 256, 512]
    settings = [c["setting"] for c in payload["comparisons"] if c["b"] == "mlp bn=post (custom+fused)"]
    assert settings == [f"batch_size={size}" for size in sizes]
    pivot = json.loads(invoke("report", "--format", "json", "--by", "batch_size", *filters).stdout)
    assert pivot["columns"] == sizes


@pytest.mark.parametrize("args,message", [
    (["runs", "--where", "foo=1"], "--where: unknown option 'foo'; see bnrun train --help, e.g. lr"),
    (["report", "--by", "foo"], "--by: unknown option 'foo'; see bnrun train --help, e.g. lr"),
    (["plot", "--x", "foo"], "--x: unknown option 'foo'; see bnrun plot --help, e.g. lr"),
    (["plot", "--x", "arch"], "--x: 'arch' is not numeric; see bnrun plot --help, e.g. lr"),
    (["report", "--metric", "foo"], "--metric: unknown value 'foo'; bnrun report --help lists them"),
    (["runs", "--sort", "foo"], "--sort: unknown field 'foo'; e.g. id, lr, test_acc_population"),
    (["runs", "--sort", "-lrr"], "--sort: unknown field 'lrr'; did you mean lr?"),
])
def test_a_name_close_to_none_points_to_the_listing_in_one_short_line(study, args, message):
    line = one_line_error(invoke(*args, "--db", str(study)))
    assert message in line and len(line) <= 100, line


def test_a_short_list_of_choices_is_named_in_the_error():
    assert unknown_choice("--x", "foo", ("a", "b"), listed_in="see --help") == "--x: unknown option 'foo'; choose from a, b"


@pytest.mark.parametrize("args,message", [
    (["plot", "--x", "learning_rate"], "--x: unknown option 'learning_rate'"),
    (["report", "--by", "batchsize"], "--by: unknown option 'batchsize'; did you mean batch_size?"),
    (["runs", "--where", "lrr=0.1"], "--where: unknown option 'lrr'; did you mean lr?"),
    (["plot", "--output", "c.jpgx"], "unknown extension .jpgx; end the file name in .png, .pdf, .svg"),
    (["plot", "--output", "noext"], "--output noext: no extension"),
    (["plot", "--metric", "best_val_acc"], "--metric applies to --x only"),
    (["plot", "--x", "lr", "--all"], "series would share one figure"),
    (["report", "--standalone"], "--standalone applies to --format latex only"),
    (["report", "--wide", "--format", "csv"], "--wide applies to --format table only"),
    (["report", "--where", "lr=abc"], "--where lr=abc: 'abc' is not a number"),
    (["report", "--where", "augment=maybe"], "--where augment=maybe: augment is yes or no (true or false)"),
    (["report", "--where", "bn_impl=fused"], "--where bn_impl=fused: choose from custom, custom+fused, torch"),
    (["report", "--run-id", "12-1"], "--run-id: '12-1' runs backwards"),
    (["report", "--arch", "mlp", "--where", "arch=cnn"], "contradictory filters: --arch and --where arch"),
    (["report", "--where", "epochs=10", "--where", "epochs=20"], "contradictory filters: --where epochs"),
    (["report", "--bn-impl", "torch", "--where", "bn_impl=custom+fused"], "contradictory filters"),
])
def test_every_mistake_is_one_line_exit_2(study, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(invoke(*args, "--db", str(study)))
    assert message in line, line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("device,message", [("gpu", "--device gpu: a GPU is --device cuda"),
                                            ("tpu", "--device: unknown value 'tpu'"), ("cuda", "no CUDA device")])
def test_eval_on_a_device_this_machine_lacks_is_one_line(study, device, message):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert message in one_line_error(invoke("eval", "--run-id", "12", "--device", device, "--db", str(study)))


def test_where_takes_comma_lists_and_the_tables_labels(study):
    either = json.loads(invoke("report", "--format", "json", "--arch", "cnn", "--where", "lr=0.1,0.3",
                               "--db", str(study)).stdout)
    assert {g["lr"] for g in either["groups"]} == {0.1, 0.3}
    fused = json.loads(invoke("report", "--format", "json", "--where", "bn_impl=custom+fused", "--db", str(study)).stdout)
    assert {(g["bn_impl"], g["fused"]) for g in fused["groups"]} == {("custom", True)}


def test_a_well_formed_filter_that_matches_nothing_is_the_empty_selection_code(study):
    line = one_line_error(invoke("report", "--where", "lr=0.7", "--db", str(study)), code=ExitCode.NOTHING_MATCHED)
    assert "no completed trial matches these filters" in line and "bnrun runs" in line


def test_output_to_a_directory_writes_inside_and_says_where(study, tmp_path):
    result = invoke("report", "--output", str(tmp_path), "--db", str(study))
    assert result.exit_code == 0 and result.stderr.strip() == f"wrote {tmp_path / 'report.txt'}"
    assert "bnrun report" in (tmp_path / "report.txt").read_text()
    latex = invoke("report", "--format", "latex", "--output", str(tmp_path), "--db", str(study))
    assert latex.stderr.strip() == f"wrote {tmp_path / 'report.tex'}"
    plot = invoke("plot", "--output", str(tmp_path), "--db", str(study))
    assert plot.exit_code == 0 and plot.stderr.strip() == f"wrote {tmp_path / 'learning_curves.png'}"
    assert (tmp_path / "learning_curves.png").stat().st_size > 20_000
    svg = invoke("plot", "--x", "lr", "--arch", "mlp", "--where", "epochs=10", "--where", "batch_size=128",
                 "--where", "dropout=0", "--where", "depth=none", "--output", str(tmp_path / "lr.svg"), "--db", str(study))
    assert svg.exit_code == 0 and (tmp_path / "lr.svg").read_text().lstrip().startswith("<?xml")


def test_figures_keep_accuracy_inside_0_to_100(tmp_path, monkeypatch):
    """A cell with one seed at chance and one trained: its seeds are drawn, no band leaves 0-100 %,
    and two placements' divergence marks at one value do not coincide."""
    drawn = []
    monkeypatch.setattr(figures, "save", lambda figure, output, *args: drawn.append(figure) or output)

    def cell(*values, diverged=0):
        return Cell(summarize(list(values)), diverged, len(values) + diverged, (), tuple(values))

    rows = (
        PivotRow({"arch": "cnn", "bn": "pre"}, {0.1: cell(0.88, 0.89, 0.90), 0.3: cell(0.85, 0.99, 0.86),
                                                 3.0: cell(diverged=3)}, 0.1),
        PivotRow({"arch": "cnn", "bn": "none"}, {0.1: cell(0.84, 0.85, 0.86), 0.3: cell(0.10, 0.85, diverged=1),
                                                  3.0: cell(diverged=3)}, 0.1),
    )
    figures.plot_against_option(Pivot("lr", "test_acc_population", (0.1, 0.3, 3.0), ("arch", "bn"), rows, ()),
                                tmp_path / "x.png", "test acc.", 100.0)
    axis = drawn[0].axes[0]
    bands = [path.vertices[:, 1] for collection in axis.collections for path in collection.get_paths()]
    assert bands and all(0 <= y.min() and y.max() <= 100 for y in bands)
    assert axis.get_ylim()[0] >= 0
    seeds = [line for line in axis.lines if line.get_linestyle() == "None" and line.get_marker() == "_"]
    assert sorted(seeds[0].get_ydata()) == pytest.approx([10.0, 85.0])
    marks = [tuple(line.get_transform().transform(line.get_xydata())[0]) for panel in drawn[0].axes
             for line in panel.lines if line.get_marker() == "x"]
    assert len(marks) == 3 and len(set(marks)) == 3  # two at lr 3, apart


def test_a_default_plot_has_few_series(study, tmp_path):
    result = invoke("plot", "--output", str(tmp_path / "curves.png"), "--db", str(study))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", [["train", "--help"], ["report", "--help"], ["plot", "--help"], ["eval", "--help"]])
def test_help_fits_80_columns(command):
    result = bnrun_in_process(*command, env=NARROW)
    assert result.returncode == 0
    fits(result.stdout)
    assert len(result.stdout.splitlines()) <= 120  # train: 37 options in 6 panels


def test_no_lock_file_outlives_a_command(mlp_trials, mlp_trials_copy):
    assert not list(mlp_trials.parent.glob("*.lock"))
    Store(str(mlp_trials_copy)).close()
    assert not list(mlp_trials_copy.parent.glob("*.lock"))


def test_eval_reads_unless_asked_to_save(mlp_trials_copy, tmp_path):
    db = mlp_trials_copy
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    result = bnrun_in_process("eval", "--run-id", "1", "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert "not stored" in result.stdout
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before and sorted(p.name for p in tmp_path.iterdir()) == [db.name]
    saved = bnrun_in_process("eval", "--run-id", "1", "--save", "--db", str(db))
    assert saved.returncode == 0, saved.stderr
    with sqlite3.connect(db) as connection:
        assert connection.execute("select count(*) from evaluations").fetchone() == (1,)
    assert not list(tmp_path.glob("*.lock"))


def test_eval_never_creates_a_store(tmp_path):
    result = bnrun_in_process("eval", "--run-id", "1", "--db", str(tmp_path / "typo.db"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"no store at {tmp_path / 'typo.db'}" in lines[0]
    assert list(tmp_path.iterdir()) == []


# -- tables that keep their labels and numbers whole -------------------------------------------------


def group_lines(text: str, group: dict) -> list[str]:
    """The lines of a report table that start with the group's labels, each whole: arch, BN, impl."""
    from bnrun.config import impl_label

    impl = "—" if group["bn"] == "none" else impl_label(group["bn_impl"], group["fused"])
    return [line for line in text.splitlines() if line.split()[:3] == [group["arch"], group["bn"], impl]]


@pytest.mark.parametrize("width", ["80", "100"])
@pytest.mark.parametrize("wide", [False, True])
def test_report_tables_keep_every_label_and_number_whole(study, width, wide):
    """Each group's labels on one line, each of its mean ± std values whole on such a line (--wide's extra
    columns in a second table with the labels repeated), nothing wider than the terminal."""
    from bnrun.analysis.metrics import digits, mean_std_text, scaled_pair
    from bnrun.analysis.texts import COLUMNS

    args = ["report", *(["--wide"] if wide else []), "--db", str(study)]
    text = invoke(*args, env={"COLUMNS": width}).stdout
    fits(text, int(width))
    payload = json.loads(invoke("report", "--format", "json", "--db", str(study)).stdout)
    shown = COLUMNS if wide else ("test_acc_population", "test_acc_running")
    for group in payload["groups"]:
        lines = group_lines(text, group)
        assert lines, (group, text)
        for metric in shown:
            value = mean_std_text(*scaled_pair(group[f"{metric}_mean"], group[f"{metric}_std"], metric), digits(metric))
            assert any(value in line for line in lines), (metric, value, text)


@pytest.mark.parametrize("selection", [["--arch", "mlp"], ["--where", "lr=0.05"]])
def test_report_fits_one_screen_with_one_line_per_comparison(study, selection):
    """At 80 columns: at most 50 lines, each paired comparison one line with its mean difference, 95% CI,
    Holm's p and n (a column, or once in the heading where every comparison has the same)."""
    from bnrun.analysis.metrics import signed  # a true minus sign, as in "a − b"

    text = invoke("report", *selection, "--db", str(study), env=NARROW).stdout
    fits(text)
    assert len(text.splitlines()) <= 50, text
    payload = json.loads(invoke("report", *selection, "--format", "json", "--db", str(study)).stdout)
    assert payload["comparisons"]
    for c in payload["comparisons"]:
        cells = [signed(100 * c["mean_diff"]), f"[{signed(100 * c['ci95_low'])},", f"{signed(100 * c['ci95_high'])}]",
                 f"{c['p_holm']:.2g}", str(c["n"])]
        if f"n = {c['n']} pairs each" in " ".join(text.split()):
            cells.pop()
        rows = [line.split() for line in text.splitlines() if line.strip().startswith(c["arch"] + " ")]
        held = len(cells) - 3  # after the raw p
        assert any(row[-len(cells) - 1:] == cells[:3] + row[-held - 1:-held] + cells[3:] for row in rows), (c, text)


def test_runs_fold_notes_at_word_boundaries(study, tmp_path):
    """A user's note in `bnrun runs` at 80 columns: every word whole, none cut at the column's edge."""
    copy = tmp_path / "notes.db"
    shutil.copyfile(study, copy)
    newest = max(run.id for run in Store(str(copy)).list_runs() if run.status == "completed")
    note = "learning-rate warmup diverged near (SIGINT/SIGTERM) initialization; rerun with batch-statistics"
    assert invoke("tag", str(newest), "--note", note, "--db", str(copy)).exit_code == 0
    text = invoke("runs", "--sort", "-id", "--limit", "30", "--db", str(copy), env=NARROW).stdout  # as a terminal
    fits(text)
    assert set(note.split()) <= set(text.split()), text


@pytest.mark.parametrize("args,message", [
    (["export", "runs", "--format", "json", "--output", "x.csv"], "--output x.csv: .csv is for csv output, not json output; end it in .json"),
    (["export", "epochs", "12", "--output", "e.json"], "--output e.json: .json is for json output, not csv output; end it in .csv"),
    (["export", "model", "12", "--output", "m.onnx"], "--output m.onnx: the model is written by torch.save; end it in .pt"),
    (["export", "model", "12", "--output", "m.PTH.x"], "--output m.PTH.x: the model is written by torch.save"),
    (["export", "model", "12", "--output", "m.txt"], "--output m.txt: the model is written by torch.save; end it in .pt or .pth"),
    (["report", "--format", "latex", "--output", "r.md"], "--output r.md: .md is for markdown output, not latex output"),
    (["claims", "--format", "json", "--output", "c.png"], "--output c.png: .png is for png output, not json output"),
])
def test_an_output_named_for_another_format_is_refused_before_anything_is_written(study, tmp_path, monkeypatch,
                                                                                   args, message):
    monkeypatch.chdir(tmp_path)
    assert message in one_line_error(invoke(*args, "--db", str(study)))
    assert list(tmp_path.iterdir()) == []


def test_an_output_with_its_formats_extension_or_another_is_written(study, tmp_path):
    for name in ("runs.json", "runs.data"):
        result = invoke("export", "runs", "--format", "json", "--output", str(tmp_path / name), "--db", str(study))
        assert result.exit_code == 0 and json.loads((tmp_path / name).read_text()), result.stderr


def test_a_metric_the_shown_trials_lack_is_said_not_left_as_blank_cells():
    """The lr sweep's trials predate train acc. (population): gen_gap by lr has no value, and the notes say so;
    the default recipe has the values, and no such note."""
    lacking = invoke("report", "--metric", "gen_gap", "--by", "lr", "--db", str(SHIPPED))
    assert lacking.exit_code == 0 and "no trial shown stores train − test acc." in " ".join(lacking.stdout.split())
    held = invoke("report", "--metric", "gen_gap", "--db", str(SHIPPED))
    assert held.exit_code == 0 and "no trial shown stores" not in held.stdout


def test_every_options_value_in_a_report_is_spelled_as_the_command_line_spells_it():
    markdown = invoke("report", "--all", "--run-id", "1-6,782-787", "--format", "markdown", "--db", str(SHIPPED)).stdout
    cells = {cell.strip() for line in markdown.splitlines() if line.startswith("|") for cell in line.split("|")}
    assert not {"None", "True", "False", "0.0"} & cells and "—" in cells


@pytest.mark.parametrize("args", [
    ("report", "--metric", "a_metric_name_long_enough_to_pass_the_edge"),  # bnrun's own error
    ("runs", "--an-option-nobody-has-defined"),  # click's
])
def test_an_error_folds_between_words_on_a_terminal_and_stays_one_line_when_piped(args):
    piped = bnrun_in_process(*args, "--db", str(SHIPPED), env={"COLUMNS": "50"})
    assert piped.returncode == 2 and len(piped.stderr.splitlines()) == 1
    on_terminal = bnrun_in_process(*args, "--db", str(SHIPPED), env={"COLUMNS": "50", "FORCE_COLOR": "1"})
    lines = on_terminal.stderr.splitlines()
    assert len(lines) > 1 and all(len(line) <= 50 for line in lines)
    assert " ".join(line.strip() for line in lines) == piped.stderr.strip()  # folded at spaces, no word cut


def test_a_pivots_comparisons_fit_80_columns_in_one_table_under_a_line_per_setting():
    """Each value of the pivot heads its comparisons once, rather than ending every label (which took 85 columns
    and split the table in two), and the one n they share is said in the heading."""
    text = invoke("report", "--by", "lr", "--arch", "mlp", "--db", str(SHIPPED), env=NARROW).stdout
    fits(text)
    comparisons = text.split("paired comparisons")[1]
    assert "(1/2)" not in comparisons and "n = 3 pairs each" in " ".join(comparisons.split())
    settings = [line.strip() for line in comparisons.splitlines() if line.strip().startswith("at lr=")]
    assert settings == ["at lr=0.003", "at lr=0.01", "at lr=0.03", "at lr=0.05", "at lr=0.1", "at lr=0.3", "at lr=1"]
    assert not any(line.rstrip().endswith(tuple(settings)) for line in comparisons.splitlines()[1:] if "−" in line)


def test_every_label_of_a_report_spells_values_as_the_command_line_does():
    """Group labels, comparison settings and pivot columns read — and 0, not None and 0.0 (report --all printed
    ghost_batch=None, dropout=0.0; a pivot's columns lr=1.0 where its figure says 1)."""
    text = invoke("report", "--all", "--arch", "mlp", "--db", str(SHIPPED), env={"COLUMNS": "300"}).stdout
    assert "ghost_batch=—" in text and not re.search(r"=(None|True|False|\d+\.0)\b", text)
    pivot = invoke("report", "--by", "lr", "--arch", "mlp", "--db", str(SHIPPED), env={"COLUMNS": "300"}).stdout
    assert "lr=1 " in pivot and "lr=1.0" not in pivot


def test_a_pivot_cell_at_chance_says_so_as_its_figure_marks_it():
    """lr=3's bn=pre trials all ended at 10 %: the figures mark the cell "chance level", the table said 10.00 ± 0.00."""
    text = invoke("report", "--by", "lr", "--arch", "mlp", "--db", str(SHIPPED), env={"COLUMNS": "300"}).stdout
    assert "10.00 ± 0.00 · at chance" in text
    assert "'at chance': the completed trials ended at chance level (10 %)" in " ".join(text.split())


def test_eval_with_a_missing_data_directory_says_so_in_one_line(tmp_path):
    """"loading Fashion-MNIST" came first, then the error: two lines for one mistake."""
    result = bnrun_in_process("eval", "1", "--data-dir", str(tmp_path / "none"), "--db", str(SHIPPED))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "does not exist" in result.stderr
