"""Every figure the pages show is what its own command draws from the shipped store: each PNG that
README.md and docs/*.md show (the ui_*.png screenshots aside) carries `bnrun:command` and
`bnrun:data-sha256`, and the command, rerun on a copy of the shipped store, draws data of the same
digest. A figure without the chunks, or one drawn from other data, fails; `python scripts/figures.py`
redraws them all."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from typer.testing import CliRunner

from bnrun.analysis.provenance import COMMAND, DIGEST, read
from bnrun.cli import app
from bnrun.store.storage import Store
from conftest import SHIPPED, figures_script

SCRIPT = figures_script()
FIGURES = SCRIPT.shown_figures()


@pytest.fixture(scope="module")
def shipped_copy(tmp_path_factory):
    """A copy of the shipped store, upgraded once to the current schema (the original is never opened)."""
    copy = tmp_path_factory.mktemp("shipped") / "bnrun.db"
    shutil.copyfile(SHIPPED, copy)
    Store(str(copy), reap=False, create=False).close()
    return copy


def test_the_pages_show_figures_and_the_screenshots_are_left_out():
    names = {figure.name for figure in FIGURES}
    assert len(names) >= 10, names
    assert not any(name.startswith("ui_") for name in names)


@pytest.mark.parametrize("figure", FIGURES, ids=[figure.name for figure in FIGURES])
def test_each_figure_is_what_its_command_draws_from_the_shipped_store(figure, shipped_copy, tmp_path):
    problem = SCRIPT.stale_figure(figure, shipped_copy, tmp_path)
    assert problem is None, f"{problem}; run python scripts/figures.py"


def test_a_plot_records_its_command_without_the_store(tmp_path, isolated_store):
    """The line is the options given (repeated ones in order), --output as given, --db left out."""
    shutil.copyfile(SHIPPED, isolated_store)
    output = tmp_path / "lr.png"
    result = CliRunner().invoke(app, ["plot", "--x", "lr", "--where", "epochs=2", "--arch", "cnn", "--db",
                                      str(isolated_store), "--output", str(output)])
    assert result.exit_code == 0, result.output
    chunks = read(output)
    assert chunks[COMMAND] == f"bnrun plot --output {output} --arch cnn --where epochs=2 --x lr"
    assert len(chunks[DIGEST]) == 64


def test_a_stale_figure_fails(shipped_copy, tmp_path):
    """A figure drawn before one of its trials was deleted no longer matches its command's data."""
    command = SCRIPT.COMMANDS["docs/lr_cnn.png"]
    figure = SCRIPT.draw(command, shipped_copy, tmp_path / "lr_cnn.png")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert SCRIPT.stale_figure(figure, shipped_copy, scratch) is None

    changed = tmp_path / "changed.db"
    shutil.copyfile(shipped_copy, changed)
    with sqlite3.connect(changed) as connection:  # one trial the figure draws: the CNN's 2-epoch sweep
        (run_id,) = connection.execute(
            "SELECT id FROM runs WHERE arch = 'cnn' AND epochs = 2 AND status = 'completed' LIMIT 1").fetchone()
    SCRIPT.bnrun(["delete", str(run_id), "--yes"], changed)
    problem = SCRIPT.stale_figure(figure, changed, scratch)
    assert problem is not None and "stale" in problem


def test_a_figure_without_provenance_fails(tmp_path):
    import matplotlib.pyplot as plt

    bare = tmp_path / "bare.png"
    figure, axis = plt.subplots()
    axis.plot([1, 2], [3, 4])
    figure.savefig(bare)
    plt.close(figure)
    assert "carries no" in SCRIPT.stale_figure(bare, tmp_path / "unused.db", tmp_path)
