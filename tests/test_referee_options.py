"""The referee's trial options (issue 29): a study tag in the trial's key (--study)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from bnrun.analysis.grouping import off_recipe
from bnrun.cli import app
from bnrun.config import TrainConfig
from bnrun.store import Store

runner = CliRunner()
SMOKE = ["--arch", "mlp", "--bn", "pre", "--no-fused", "--epochs", "1", "--train-subset", "600"]
# Keys of trials stored before the options existed (computed by bnrun at commit b0a42ba).
LEGACY_KEYS = {
    TrainConfig(): "c55b82813f38fdc0",
    TrainConfig(arch="mlp", epochs=20, depth=4, width=128, dropout=0.3, precision="bf16"): "f06b4f408923b5ca",
}


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize("config, key", LEGACY_KEYS.items())
def test_keys_without_the_new_options_are_unchanged(config, key):
    assert config.key() == key
    assert "study" not in config.identity()


def test_a_study_tag_makes_a_new_key():
    tagged = TrainConfig(study="referee-cnn")
    assert tagged.key() not in LEGACY_KEYS.values()
    assert tagged.identity()["study"] == "referee-cnn"
    assert TrainConfig.from_identity(tagged.identity()) == tagged


@pytest.fixture(scope="module")
def study_store(tmp_path_factory):
    """One untagged trial and the same trial tagged `ref`."""
    db = tmp_path_factory.mktemp("study") / "study.db"
    for extra in ([], ["--study", "ref"]):
        result = invoke("train", *SMOKE, *extra, "--db", str(db))
        assert result.exit_code == 0, result.output
    return db


def test_the_tagged_trial_is_a_second_row_with_its_tag(study_store):
    runs = stored_runs(study_store)
    assert sorted((run.study or "") for run in runs) == ["", "ref"]
    assert len({run.config_key for run in runs}) == 2
    tagged = next(run for run in runs if run.study)
    assert json.loads(tagged.config_json)["study"] == "ref"


@pytest.mark.parametrize("study, to_run", [([], 0), (["--study", "ref"], 0), (["--study", "other"], 1)])
def test_dry_run_counts_a_new_tag_as_trials_to_run(study_store, study, to_run):
    result = invoke("train", *SMOKE, *study, "--dry-run", "--db", str(study_store))
    assert result.exit_code == 0, result.output
    assert f"{to_run} to run" in result.output


@pytest.mark.parametrize("value, count", [("ref", 1), ("none", 1), ("ref,none", 2), ("other", 0)])
def test_runs_where_study(study_store, value, count):
    result = invoke("export", "runs", "--where", f"study={value}", "--format", "json", "--db", str(study_store))
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == count
    assert {row["study"] for row in rows} <= {None if part == "none" else part for part in value.split(",")}


def stored_runs(db) -> list:
    store = Store(str(db), read_only=True)
    try:
        return store.list_runs()
    finally:
        store.close()


def test_report_where_study_selects_the_tagged_trial(study_store):
    tagged = next(run.id for run in stored_runs(study_store) if run.study)
    result = invoke("report", "--where", "study=ref", "--format", "json", "--db", str(study_store))
    assert result.exit_code == 0, result.output
    assert [group["run_ids"] for group in json.loads(result.output)["groups"]] == [[tagged]]


def test_report_tells_the_studies_apart(study_store):
    result = invoke("report", "--format", "markdown", "--db", str(study_store))
    assert result.exit_code == 0, result.output
    assert "| study |" in result.output and "| ref |" in result.output


def test_a_tagged_trial_is_off_the_default_recipe(study_store):
    untagged = next(run for run in stored_runs(study_store) if not run.study)
    default = replace(untagged, epochs=20, train_subset=None)
    assert off_recipe(default) == ()
    assert off_recipe(replace(default, study="ref")) == ("study",)


def test_show_names_the_study(study_store):
    run_id = next(run.id for run in stored_runs(study_store) if run.study)
    result = invoke("show", str(run_id), "--db", str(study_store))
    assert result.exit_code == 0, result.output
    assert any(line.split()[:2] == ["study", "ref"] for line in result.output.splitlines())


@pytest.mark.parametrize("tag", ["a,b", "has space", "none", "-lead", "x" * 65])
def test_a_bad_study_tag_gets_one_line(tag, isolated_store):
    result = invoke("train", *SMOKE, "--study", tag)
    assert result.exit_code == 2
    assert "--study:" in result.output and "Traceback" not in result.output
    assert not isolated_store.exists()
