"""The referee's trial options (issue 29): a study tag in the trial's key (--study), the weight
initialization (--init), ghost batch norm (--ghost-batch) against a chunk-by-chunk torch reference,
and training to a target loss (--target-loss) with what stopped it recorded."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from bnrun.analysis.grouping import off_recipe
from bnrun.cli import app
from bnrun.config import SweepConfig, TrainConfig
from bnrun.errors import ExitCode
from bnrun.nn import BatchNorm1d, BatchNorm2d
from bnrun.store import Store
from bnrun.training.models import TorchGhostBatchNorm1d, TorchGhostBatchNorm2d, build_model

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
    assert not {"study", "init", "ghost_batch", "target_loss"} & set(config.identity())
    assert config.key() == TrainConfig(**{**config.__dict__, "init": "default", "ghost_batch": None}).key()


@pytest.mark.parametrize("option", [{"init": "kaiming"}, {"ghost_batch": 32}, {"target_loss": 0.02}])
def test_each_new_option_makes_a_new_key(option):
    config = TrainConfig(**option)
    assert config.key() != TrainConfig().key()
    assert TrainConfig.from_identity(config.identity()) == config


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
    if not count:  # an empty selection: its own exit code, one line
        assert result.exit_code == ExitCode.NOTHING_MATCHED and not result.stdout
        return
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
    result = invoke("report", "--all", "--format", "markdown", "--db", str(study_store))
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


# -- --init ------------------------------------------------------------------------------------------


def affine_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model if isinstance(m, (nn.Linear, nn.Conv2d))]


@pytest.mark.parametrize("arch, depth", [("mlp", 2), ("cnn", None)])
def test_kaiming_draws_he_normal_hidden_layers_and_a_gain_one_classifier(arch, depth):
    torch.manual_seed(0)
    layers = affine_layers(build_model(arch, "pre", depth=depth, width=256 if arch == "mlp" else None,
                                       init="kaiming"))
    for layer in layers:
        fan_in = layer.weight[0].numel()
        gain = 1.0 if layer is layers[-1] else 2.0
        std = float(layer.weight.detach().std())
        assert std == pytest.approx((gain / fan_in) ** 0.5, rel=0.1 if layer.weight.numel() < 5000 else 0.03)
        assert float(layer.weight.detach().mean()) == pytest.approx(0, abs=4 * std / layer.weight.numel() ** 0.5)
        assert torch.count_nonzero(layer.bias) == 0


def test_default_init_is_torchs_and_kaiming_is_shared_by_every_placement():
    torch.manual_seed(1)
    default = build_model("mlp", "none", init="default")
    torch.manual_seed(1)
    assert all(torch.equal(a, b) for a, b in zip(default.parameters(), build_model("mlp", "none").parameters()))
    weights = []
    for bn in ("none", "pre", "post"):
        torch.manual_seed(1)
        weights.append([m.weight for m in affine_layers(build_model("mlp", bn, init="kaiming"))])
    assert all(torch.equal(a, b) for other in weights[1:] for a, b in zip(weights[0], other, strict=True))
    assert not torch.equal(weights[0][0], affine_layers(default)[0].weight)


# -- --ghost-batch: the layer against a chunk-by-chunk reference -------------------------------------------


def chunk_bounds(n: int, size: int) -> list[tuple[int, int]]:
    """Chunks of `size`, the last taking the remainder; fewer than 2·size examples are one chunk."""
    count = max(1, n // size)
    starts = [i * size for i in range(count)]
    return list(zip(starts, starts[1:] + [n]))


def chunked_reference(x, size, weight, bias, running_mean, running_var, momentum=0.1, eps=1e-5):
    """torch.nn.functional.batch_norm chunk by chunk, each chunk updating a copy of the running
    statistics; the copies averaged."""
    outputs, means, variances = [], [], []
    for start, end in chunk_bounds(x.shape[0], size):
        mean, var = running_mean.clone(), running_var.clone()
        outputs.append(nn.functional.batch_norm(x[start:end], mean, var, weight, bias, True, momentum, eps))
        means.append(mean)
        variances.append(var)
    return torch.cat(outputs), torch.stack(means).mean(0), torch.stack(variances).mean(0)


LAYERS = {
    "eager": lambda dim, c, size: (BatchNorm1d if dim == 2 else BatchNorm2d)(c, ghost_batch=size),
    "fused": lambda dim, c, size: (BatchNorm1d if dim == 2 else BatchNorm2d)(c, fused=True, ghost_batch=size),
    "torch": lambda dim, c, size: (TorchGhostBatchNorm1d if dim == 2 else TorchGhostBatchNorm2d)(c, ghost_batch=size),
}


@pytest.mark.parametrize("path", LAYERS)
@pytest.mark.parametrize("shape, channels_last", [((32, 5), False), ((30, 5), False), ((7, 5), False),
                                                   ((24, 3, 4, 4), False), ((26, 3, 4, 4), True)])
def test_ghost_batches_match_the_chunked_reference(path, shape, channels_last):
    size = 4 if len(shape) == 2 else 6
    torch.manual_seed(2)
    layer = LAYERS[path](len(shape), shape[1], size)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
        layer.running_mean.uniform_(-1, 1)
    x = torch.randn(shape) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    expected, mean, var = chunked_reference(x_ref, size, weight, bias, layer.running_mean.clone(),
                                            layer.running_var.clone())
    x = x.requires_grad_()
    y = layer(x)
    torch.testing.assert_close(y, expected)
    upstream = torch.randn(shape)
    y.backward(upstream)
    expected.backward(upstream)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.weight.grad, weight.grad)
    torch.testing.assert_close(layer.bias.grad, bias.grad)
    torch.testing.assert_close(layer.running_mean, mean)
    torch.testing.assert_close(layer.running_var, var)
    assert int(layer.num_batches_tracked) == 1
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)
    if path == "fused":
        assert layer.path == "fused-cpu"


@pytest.mark.parametrize("path", LAYERS)
def test_ghost_batches_leave_prediction_mode_alone(path):
    torch.manual_seed(3)
    layer = LAYERS[path](2, 6, 4)
    layer(torch.randn(32, 6))
    plain = nn.BatchNorm1d(6)
    plain.load_state_dict(layer.state_dict())
    layer.eval()
    plain.eval()
    x = torch.randn(16, 6)
    torch.testing.assert_close(layer(x), plain(x))


def test_ghost_batch_models_load_each_others_weights():
    custom = build_model("mlp", "pre", "custom", True, ghost_batch=16)
    reference = build_model("mlp", "pre", "torch", ghost_batch=16)
    reference.load_state_dict(custom.state_dict())
    assert any(isinstance(m, TorchGhostBatchNorm1d) for m in reference)
    assert all(m.ghost_batch == 16 for m in custom if isinstance(m, BatchNorm1d))


def test_a_ghost_batch_of_the_whole_batch_is_the_plain_trial():
    sweep = SweepConfig(axes=(("bn", ("none", "pre")), ("ghost_batch", (16, 128))), seeds=(0,),
                        base=TrainConfig(arch="mlp"))
    assert sorted((c.bn, c.ghost_batch or 0) for c in sweep.configs()) == [("none", 0), ("pre", 0), ("pre", 16)]


# -- the options on the command line ----------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--ghost-batch", "48"], "--ghost-batch must divide --batch-size"),
    (["--ghost-batch", "256"], "--ghost-batch must divide --batch-size"),
    (["--ghost-batch", "1"], "--ghost-batch must be at least 2"),
    (["--ghost-batch", "128"], "--ghost-batch equal to --batch-size is plain batch norm"),
    (["--ghost-batch", "16", "--bn", "none"], "--ghost-batch applies to batch norm"),
    (["--init", "xavier"], "--init: unknown value xavier"),
    (["--target-loss", "0"], "--target-loss must be positive"),
    (["--target-loss", "nan"], "--target-loss must be a finite number"),
])
def test_bad_options_get_one_line(args, message, isolated_store):
    result = invoke("train", "--arch", "mlp", "--bn", "pre", *args, "--epochs", "1", "--train-subset", "600")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not isolated_store.exists()


@pytest.fixture(scope="module")
def option_store(tmp_path_factory):
    """Ghost batches of 16, kaiming init, and a target loss every first epoch reaches, for the custom
    (fused) and the torch.nn BN; then the plain trial with 2 epochs."""
    db = tmp_path_factory.mktemp("referee") / "referee.db"
    common = ["--arch", "mlp", "--bn", "pre", "--fused", "--epochs", "2", "--train-subset", "600"]
    for extra in (["--bn-impl", "custom,torch", "--ghost-batch", "16", "--init", "kaiming", "--target-loss", "10"],
                  []):
        result = invoke("train", *common, *extra, "--db", str(db))
        assert result.exit_code == 0, result.output
    return db


def test_trials_store_the_options_and_what_stopped_them(option_store):
    runs = sorted(stored_runs(option_store), key=lambda run: run.id)
    assert [(r.bn_impl, r.ghost_batch, r.init, r.target_loss) for r in runs] == [
        ("custom", 16, "kaiming", 10.0), ("torch", 16, "kaiming", 10.0), ("custom", None, "default", None)]
    assert [(r.status, r.epochs_completed, r.stopped_by) for r in runs] == [
        ("completed", 1, "target-loss"), ("completed", 1, "target-loss"), ("completed", 2, "epochs")]
    assert runs[0].bn_path == "fused-cpu" and runs[1].bn_path == "torch"
    assert json.loads(runs[0].config_json)["ghost_batch"] == 16


def test_report_shows_the_options_that_vary(option_store):
    result = invoke("report", "--all", "--format", "markdown", "--db", str(option_store))
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if line.startswith("| arch"))
    assert {"init", "ghost_batch", "target_loss"} <= {cell.strip() for cell in header.split("|")}


@pytest.mark.parametrize("where, impls", [("ghost_batch=16", {"custom", "torch"}), ("init=default", {"custom"}),
                                          ("target_loss=none", {"custom"})])
def test_where_selects_by_the_new_options(option_store, where, impls):
    result = invoke("export", "runs", "--where", where, "--format", "json", "--db", str(option_store))
    assert result.exit_code == 0, result.output
    assert {row["bn_impl"] for row in json.loads(result.output)} == impls


def test_a_diverged_trial_records_what_stopped_it(tmp_path):
    db = tmp_path / "diverged.db"
    result = invoke("train", "--arch", "mlp", "--bn", "none", "--lr", "1e6", "--schedule", "constant", "--epochs", "2",
                    "--train-subset", "600", "--db", str(db))
    assert result.exit_code == 0, result.output
    (run,) = stored_runs(db)
    assert (run.status, run.stopped_by) == ("diverged", "diverged")


def test_runs_lists_the_options_that_vary_at_80_columns(option_store, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = invoke("runs", "--db", str(option_store))
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if line.lstrip().startswith("id"))
    assert "init" in header.split() and "ghost" in header.split()
    assert "also varying" in result.output and "target_loss" in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80


@pytest.mark.parametrize("schedule, warms, anneals, cycles", [
    ("onecycle", True, True, True), ("onecycle-flat", True, True, False), ("warmup", True, False, False),
    ("cosine", False, True, False), ("constant", False, False, False)])
def test_the_schedules_separate_warm_up_annealing_and_momentum_cycling(schedule, warms, anneals, cycles):
    from bnrun.training.loop import make_optimizer, make_scheduler

    config = TrainConfig(arch="mlp", schedule=schedule, epochs=4, lr=0.1)
    optimizer = make_optimizer(config, torch.nn.Linear(2, 2))
    scheduler = make_scheduler(config, optimizer, 10)
    rates, momenta = [], []
    for _ in range(40):
        rates.append(optimizer.param_groups[0]["lr"])
        momenta.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        scheduler.step()
    assert (rates[0] < 0.01) == warms and max(rates) == pytest.approx(0.1, rel=0.01)
    assert (rates[-1] < 0.01) == anneals
    assert (len(set(momenta)) > 1) == cycles
