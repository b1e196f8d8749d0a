"""Depth, width and dropout as training options, and the generalization-gap metrics."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import bnrun.nn as bnn
from bnrun.cli import app
from bnrun.config import SweepConfig, TrainConfig
from bnrun.store import Store
from bnrun.training.models import build_model

runner = CliRunner()
SMOKE = ["--epochs", "1", "--train-subset", "600"]


def invoke(*args: str):
    return runner.invoke(app, list(args))


def layer_types(model: nn.Module) -> list[str]:
    return [type(m).__name__ for m in model]


def test_unset_options_build_the_assignment_models():
    assert layer_types(build_model("mlp", "pre")) == [
        "Flatten", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    mlp = build_model("mlp", "none")
    assert [m.out_features for m in mlp if isinstance(m, nn.Linear)] == [256, 128, 10]
    cnn = build_model("cnn", "post")
    assert [m.out_channels for m in cnn if isinstance(m, nn.Conv2d)] == [32, 64]
    assert sum(p.numel() for p in cnn.parameters()) == 422090


def test_cnn_at_depth_two_width_32_is_the_assignment_cnn_weight_for_weight():
    torch.manual_seed(3)
    legacy = build_model("cnn", "pre", "custom", True, True)
    torch.manual_seed(3)
    spelled = build_model("cnn", "pre", "custom", True, True, depth=2, width=32)
    for (name, a), (_, b) in zip(legacy.state_dict().items(), spelled.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert TrainConfig(arch="cnn", depth=2, width=32).key() != TrainConfig(arch="cnn").key()
    sweep = SweepConfig(axes=(("arch", ("cnn",)), ("depth", (2,)), ("width", (32,))), seeds=(0,))
    (config,) = sweep.configs()
    assert config.key() == TrainConfig(arch="cnn").key()  # the grid writes it as the legacy trial


@pytest.mark.parametrize("depth, maps", [(1, 14), (2, 7), (4, 7)])
def test_cnn_pools_only_while_the_map_is_larger_than_7(depth, maps):
    model = build_model("cnn", "pre", depth=depth, width=8)
    assert sum(isinstance(m, nn.Conv2d) for m in model) == depth
    linear = next(m for m in model if isinstance(m, nn.Linear))
    assert linear.in_features == (8 if depth == 1 else 16) * maps * maps
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_mlp_depth_and_width():
    model = build_model("mlp", "post", depth=5, width=32)
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [32] * 5 + [10]
    assert [m.out_features for m in build_model("mlp", "none", width=64) if isinstance(m, nn.Linear)] == [64, 64, 10]


@pytest.mark.parametrize("bn, block", [
    ("pre", ["Linear", "BatchNorm1d", "ReLU", "Dropout"]),
    ("post", ["Linear", "ReLU", "BatchNorm1d", "Dropout"]),
    ("none", ["Linear", "ReLU", "Dropout"]),
])
def test_dropout_closes_each_hidden_block(bn, block):
    model = build_model("mlp", bn, depth=2, width=16, dropout=0.3)
    assert layer_types(model)[1:1 + len(block)] == block
    assert sum(isinstance(m, nn.Dropout) for m in model) == 2
    assert all(m.p == 0.3 for m in model if isinstance(m, nn.Dropout))


def test_fused_pre_keeps_the_unfused_layer_indices_with_dropout():
    plain = build_model("mlp", "pre", "custom", False, depth=3, width=16, dropout=0.2)
    fused = build_model("mlp", "pre", "custom", True, depth=3, width=16, dropout=0.2)
    assert plain.state_dict().keys() == fused.state_dict().keys()
    assert all(m.relu for m in fused if isinstance(m, bnn.BatchNorm1d))


def test_model_options_make_a_grid_with_distinct_keys_and_legacy_keys_unchanged():
    sweep = SweepConfig(axes=(("arch", ("mlp",)), ("depth", (None, 1, 4)), ("width", (None, 64)), ("dropout", (0.0, 0.5))),
                        seeds=(0,))
    keys = {config.key() for config in sweep.configs()}
    assert len(keys) == 12
    assert TrainConfig(arch="mlp").key() in keys
    assert "depth" not in TrainConfig(arch="mlp").identity() and "dropout" not in TrainConfig().identity()
    assert TrainConfig(arch="mlp", dropout=0.5).identity()["dropout"] == 0.5


def test_shipped_trials_keep_their_keys():
    """Every stored trial's identity still hashes to its key; those stored before the model options
    existed (run ids 1-215) read back as the assignment's models without dropout."""
    from bnrun.store import Store as ShippedStore
    from conftest import REPO

    store = ShippedStore(str(REPO / "bnrun.db"), read_only=True)
    try:
        for run in store.list_runs():
            config = TrainConfig.from_identity(json.loads(run.config_json))
            assert config.key() == run.config_key, run.id
            assert (config.depth, config.width, config.dropout) == (run.depth, run.width, run.dropout)
            if run.id <= 215:
                assert (config.depth, config.width, config.dropout) == (None, None, 0.0)
    finally:
        store.close()


@pytest.mark.parametrize("args, message", [
    (["--dropout", "1"], "--dropout must be below 1"),
    (["--dropout", "-0.1"], "--dropout must be"),
    (["--depth", "0"], "--depth must be"),
    (["--width", "abc"], "--width: 'abc' is not an integer"),
    (["--width", "１２８"], "--width: '１２８' is not an integer"),  # full-width digits, which int() would read
])
def test_bad_model_options_get_one_line(args, message, isolated_store):
    result = invoke("train", "--arch", "mlp", *args, *SMOKE)
    assert result.exit_code == 2
    assert message in result.output
    assert not isolated_store.exists()


@pytest.fixture(scope="module")
def option_store(tmp_path_factory):
    db = tmp_path_factory.mktemp("options") / "options.db"
    result = invoke("train", "--arch", "mlp", "--bn", "none,pre", "--depth", "1,3", "--width", "32", "--dropout", "0,0.3",
                    *SMOKE, "--db", str(db))
    assert result.exit_code == 0, result.output
    return db


def test_trials_store_their_model_options_and_train_metrics(option_store):
    store = Store(str(option_store), read_only=True)
    runs = store.list_runs()
    store.close()
    assert sorted((r.bn, r.depth, r.width, r.dropout) for r in runs) == sorted(
        (bn, depth, 32, dropout) for bn in ("none", "pre") for depth in (1, 3) for dropout in (0.0, 0.3))
    for run in runs:
        assert 0 < run.train_acc_population <= 1 and run.train_loss_population > 0
        assert json.loads(run.config_json)["depth"] == run.depth


def test_report_by_depth_and_where_dropout(option_store):
    result = invoke("report", "--by", "depth", "--where", "dropout=0.3", "--format", "csv", "--db", str(option_store))
    assert result.exit_code == 0, result.output
    assert "depth=1" in result.output and "depth=3" in result.output


def test_generalization_gap_metrics(option_store):
    from bnrun.analysis.metrics import metric_value

    store = Store(str(option_store), read_only=True)
    run = store.list_runs()[0]
    store.close()
    assert metric_value(run, "gen_gap") == pytest.approx(run.train_acc_population - run.test_acc_population)
    assert metric_value(run, "gen_gap_loss") == pytest.approx(run.test_loss_population - run.train_loss_population)
    assert metric_value(run, "train_gap") == pytest.approx(run.train_acc - run.test_acc_population)
    result = invoke("report", "--metric", "gen_gap", "--format", "json", "--db", str(option_store))
    assert result.exit_code == 0, result.output
    assert "gen_gap" in result.output


def test_reproduce_a_trial_with_dropout_is_bit_identical(option_store, tmp_path):
    store = Store(str(option_store), read_only=True)
    run_id = next(r.id for r in store.list_runs() if r.dropout == 0.3 and r.depth == 3 and r.bn == "pre")
    store.close()
    result = invoke("reproduce", str(run_id), "--db", str(option_store))
    assert result.exit_code == 0, result.output
