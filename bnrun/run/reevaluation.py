"""`bnrun eval`: rebuild a stored trial from its configuration and checkpoint and evaluate it
in prediction mode, with the running averages and with the population statistics, and, when
asked, with the statistics of each test batch of given sizes (Wu & Johnson 2021), under the
trial's precision; the evaluation is stored beside the trial."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import bnrun
from bnrun.store import EvaluationRecord, RunRecord, Store
from bnrun.training.checkpoint import load_population, rebuild_model
from bnrun.training.data import check_available, load
from bnrun.training.evaluation import evaluate_split, evaluate_with_batch_statistics
from bnrun.training.hardware import resolve_device


@dataclass(frozen=True)
class EvalResult:
    run: RunRecord
    evaluation: EvaluationRecord  # its id is None when it was not stored


def split_metrics(model, dataset, device: str, precision: str, statistics: str) -> dict[str, float]:
    """Validation accuracy, test loss and accuracy, named as the evaluation's columns for `statistics`."""
    _, val_acc = evaluate_split(model, dataset.val, device, precision)
    test_loss, test_acc = evaluate_split(model, dataset.test, device, precision)
    return {f"val_acc_{statistics}": val_acc, f"test_loss_{statistics}": test_loss, f"test_acc_{statistics}": test_acc}


def evaluate_run(store: Store, run_id: int, data_dir: Path | None = None, device: str = "cpu",
                 batch_sizes: tuple[int, ...] = (), progress: Callable[[str], None] = lambda _step: None,
                 save: bool = True) -> EvalResult:
    """`progress` hears each step before it starts (an evaluation takes tens of seconds); `save` stores the
    evaluation beside the trial (otherwise the store is only read)."""
    run = store.get_run(run_id)
    blob = store.load_checkpoint(run_id)
    model, population = rebuild_model(run, blob)
    device = resolve_device(device)
    check_available(data_dir)  # a missing data directory is one line, before any step is announced
    progress("loading Fashion-MNIST")
    dataset = load(data_dir, run.train_subset)
    model.to(device)
    progress(f"evaluating run {run_id} on {device}: validation and test with the running averages")
    metrics = split_metrics(model, dataset, device, run.precision, "running")
    load_population(model, population)
    progress(f"evaluating run {run_id}: validation and test with the population statistics")
    metrics |= split_metrics(model, dataset, device, run.precision, "population")
    if batch_sizes:
        progress(f"evaluating run {run_id}: test with batch statistics, batches of {', '.join(map(str, batch_sizes))}")
    batch_stats = {
        size: evaluate_with_batch_statistics(model, dataset.test, size, device, run.precision) for size in batch_sizes
    }
    matches = all(metrics[name] == getattr(run, name) for name in ("test_acc_running", "test_acc_population"))
    values = dict(
        device=device,
        **metrics,
        matches_stored=matches,
        bnrun_version=bnrun.__version__,
        batch_stats_json=json.dumps({str(size): list(values) for size, values in batch_stats.items()})
        if batch_stats
        else None,
    )
    if not save:
        return EvalResult(run, EvaluationRecord(id=None, run_id=run_id, created_at=datetime.now(), **values))
    return EvalResult(run, store.add_evaluation(run_id, values))
