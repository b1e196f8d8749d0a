"""`bnrun eval`: rebuild a stored trial from its configuration and checkpoint and evaluate it
in prediction mode, with the running averages and with the population statistics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import bnrun
from bnrun import data as data_mod
from bnrun.errors import StoreError
from bnrun.models import build_model
from bnrun.store import EvaluationRecord, RunRecord, Store
from bnrun.train import deserialize_checkpoint, evaluate, resolve_device


@dataclass(frozen=True)
class EvalResult:
    run: RunRecord
    evaluation: EvaluationRecord


def rebuild_model(run: RunRecord, blob: bytes) -> tuple[nn.Module, dict]:
    """The trained model with its running averages loaded, and the stored population statistics."""
    try:
        checkpoint = deserialize_checkpoint(blob)
        model = build_model(run.arch, run.bn, run.bn_impl, run.fused)
        model.load_state_dict(checkpoint["state_dict"])
    except Exception as error:  # noqa: BLE001 - an unreadable checkpoint is a store problem
        raise StoreError(f"the checkpoint of run {run.id} cannot be loaded ({type(error).__name__}); retrain it with --force") from None
    return model, checkpoint["population"]


def load_population(model: nn.Module, population: dict) -> None:
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, stats in population.items():
            modules[name].running_mean.copy_(stats["mean"])
            modules[name].running_var.copy_(stats["var"])


def evaluate_run(store: Store, run_id: int, data_dir: Path | None = None, device: str = "cpu") -> EvalResult:
    run = store.get_run(run_id)
    blob = store.load_checkpoint(run_id)
    model, population = rebuild_model(run, blob)
    device = resolve_device(device)
    dataset = data_mod.load(data_dir, run.train_subset)
    model.to(device)
    _, val_running = evaluate(model, dataset.val, device)
    test_loss_running, test_acc_running = evaluate(model, dataset.test, device)
    load_population(model, population)
    _, val_population = evaluate(model, dataset.val, device)
    test_loss_population, test_acc_population = evaluate(model, dataset.test, device)
    matches = test_acc_population == run.test_acc_population and test_acc_running == run.test_acc_running
    evaluation = store.add_evaluation(run_id, dict(
        device=device, val_acc_running=val_running, val_acc_population=val_population,
        test_loss_running=test_loss_running, test_acc_running=test_acc_running,
        test_loss_population=test_loss_population, test_acc_population=test_acc_population,
        matches_stored=matches, bnrun_version=bnrun.__version__,
    ))
    return EvalResult(run, evaluation)
