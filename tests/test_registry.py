"""The option registry (bnrun.registry): each training option declared once, the configuration, `train`'s
options, the store's columns and the listings generated from it; `--label-smoothing`, added through the
registry alone, trains, is stored, and is filtered and reported on like any option."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bnrun.cli import app
from bnrun.config import TrainConfig
from bnrun.errors import ExitCode
from bnrun.registry import LEGACY_VALUES, OPTIONS
from bnrun.store.models import Run
from conftest import REPO

runner = CliRunner()
PACKAGE = REPO / "bnrun"
FRONT_AND_STORE = ("cli", "store", "run", "web", "analysis")


def files_naming(name: str, folders: tuple[str, ...] = ("",)) -> list[Path]:
    return sorted({path for folder in folders for path in (PACKAGE / folder).rglob("*.py")
                   if name in path.read_text()})


@pytest.mark.parametrize("name", ["ghost_batch", "target_loss", "weight_decay"])
def test_an_option_is_named_in_at_most_one_file_of_the_front_ends_and_the_store(name):
    assert len(files_naming(name, FRONT_AND_STORE)) <= 1, files_naming(name, FRONT_AND_STORE)


def test_label_smoothing_is_named_only_in_the_registry_and_the_training_code():
    assert [path.relative_to(PACKAGE).as_posix() for path in files_naming("label_smoothing")] == [
        "registry.py", "training/loop.py"]


def test_every_option_is_a_field_a_column_and_a_train_option():
    help_text = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).stdout
    for option in OPTIONS:
        assert option.name in TrainConfig.__dataclass_fields__
        column = Run.__table__.c[option.name]
        assert column.nullable == option.optional
        assert option.flag_name in help_text


def test_an_option_at_its_legacy_value_stays_out_of_the_key():
    assert TrainConfig().key() == "c55b82813f38fdc0"  # the key of the default trial since the first store
    assert set(LEGACY_VALUES) & set(TrainConfig().identity()) == set()
    assert TrainConfig(label_smoothing=0.1).key() != TrainConfig().key()


def test_label_smoothing_trains_is_stored_filtered_and_reported(tmp_path):
    db = str(tmp_path / "smooth.db")
    trained = runner.invoke(app, ["train", "--arch", "mlp", "--no-fused", "--epochs", "1", "--train-subset", "600",
                                  "--label-smoothing", "0,0.1", "--no-checkpoint", "--db", db])
    assert trained.exit_code == 0, trained.output
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT label_smoothing, config_json FROM runs ORDER BY id").fetchall()
    assert [row[0] for row in rows] == [0.0, 0.1]
    assert "label_smoothing" not in json.loads(rows[0][1]) and json.loads(rows[1][1])["label_smoothing"] == 0.1
    report = runner.invoke(app, ["report", "--by", "label_smoothing", "--all", "--db", db], env={"COLUMNS": "120"})
    assert report.exit_code == 0 and "label_smoothing=0.1" in report.stdout, report.output
    listed = runner.invoke(app, ["export", "runs", "--where", "label_smoothing=0.1", "--format", "json", "--db", db])
    assert listed.exit_code == 0 and len(json.loads(listed.stdout)) == 1, listed.output
    refused = runner.invoke(app, ["train", "--label-smoothing", "1", "--dry-run", "--db", db])
    assert refused.exit_code == ExitCode.USAGE and "--label-smoothing must be below 1" in refused.stderr
