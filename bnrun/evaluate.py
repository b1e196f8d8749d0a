"""`bnrun eval`: rebuild a stored trial from its configuration and checkpoint and evaluate it
in prediction mode, with the running averages and with the population statistics, and, when
asked, with the statistics of each test batch of given sizes (Wu & Johnson 2021)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import bnrun
from bnrun import data as data_mod
from bnrun.errors import StoreError
from bnrun.models import model_of
from bnrun.precision import logits as precision_logits
from bnrun.store import EvaluationRecord, RunRecord, Store
from bnrun.checkpoint import deserialize_checkpoint
from bnrun.train import evaluate, resolve_device


@dataclass(frozen=True)
class EvalResult:
    run: RunRecord
    evaluation: EvaluationRecord

    def batch_stats(self) -> dict[int, tuple[float, float]]:
        """{batch size: (test loss, test accuracy)} with batch statistics, if asked for."""
        raw = json.loads(self.evaluation.batch_stats_json or "{}")
        return {int(size): (loss, acc) for size, (loss, acc) in raw.items()}


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive batches covering all n items; a trailing batch of one joins the one before
    (a single value has no variance to normalize with)."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(start, end) for start, end in zip(starts, starts[1:] + [n])]


@torch.no_grad()
def evaluate_with_batch_statistics(model: nn.Module, split: data_mod.Split, batch_size: int, device: str,
                                   precision: str = "fp32") -> tuple[float, float]:
    """Mean cross-entropy and accuracy with every BN layer normalizing each batch of `batch_size`
    test images by that batch's own statistics (training mode on a copy: no running average moves)."""
    probe = copy.deepcopy(model).train()
    loss_sum, correct = 0.0, 0
    for part in batch_slices(len(split), batch_size):
        x, y = split.images[part].to(device), split.labels[part].to(device)
        logits = precision_logits(probe, x, precision, device)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
    return loss_sum / len(split), correct / len(split)


def rebuild_model(run: RunRecord, blob: bytes) -> tuple[nn.Module, dict]:
    """The trained model with its running averages loaded, and the stored population statistics."""
    try:
        checkpoint = deserialize_checkpoint(blob)
        model = model_of(run)
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


def evaluate_run(store: Store, run_id: int, data_dir: Path | None = None, device: str = "cpu",
                 batch_sizes: tuple[int, ...] = ()) -> EvalResult:
    run = store.get_run(run_id)
    blob = store.load_checkpoint(run_id)
    model, population = rebuild_model(run, blob)
    device = resolve_device(device)
    dataset = data_mod.load(data_dir, run.train_subset)
    model.to(device)
    precision = run.precision
    _, val_running = evaluate(model, dataset.val, device, precision)
    test_loss_running, test_acc_running = evaluate(model, dataset.test, device, precision)
    load_population(model, population)
    _, val_population = evaluate(model, dataset.val, device, precision)
    test_loss_population, test_acc_population = evaluate(model, dataset.test, device, precision)
    batch_stats = {size: evaluate_with_batch_statistics(model, dataset.test, size, device, precision) for size in batch_sizes}
    matches = test_acc_population == run.test_acc_population and test_acc_running == run.test_acc_running
    evaluation = store.add_evaluation(run_id, dict(
        device=device, val_acc_running=val_running, val_acc_population=val_population,
        test_loss_running=test_loss_running, test_acc_running=test_acc_running,
        test_loss_population=test_loss_population, test_acc_population=test_acc_population,
        matches_stored=matches, bnrun_version=bnrun.__version__,
        batch_stats_json=json.dumps({str(size): list(values) for size, values in batch_stats.items()}) if batch_stats else None,
    ))
    return EvalResult(run, evaluation)
