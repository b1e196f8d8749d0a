"""Training one trial and sweeping a grid of them, recording everything in the store.

A trial: seed → model and batch order, SGD (or Adam) under a one-cycle/cosine schedule, per-epoch
validation in prediction mode, then population statistics over the whole training set and the
test set evaluated with both the running averages and the population statistics.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


from bnrun import data as data_mod
from bnrun.config import SweepConfig, TrainConfig
from bnrun.diagnostics import Diagnostics
from bnrun.errors import StoreError
from bnrun.models import build_model
from bnrun.nn import recompute_population_statistics
from bnrun.progress import Reporter
from bnrun.provenance import provenance
from bnrun.store import EpochRecord, FinalMetrics, Store

EVAL_BATCH = 1000
HEARTBEAT_S = 30.0


OUTCOMES = ("completed", "diverged")  # results a re-run skips; failed, interrupted and reaped trials run again


class Diverged(Exception):
    """The training loss became NaN or infinite."""


@dataclass
class SweepResult:
    completed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    diverged: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is available")
    return name


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.momentum > 0)


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle" and total >= 4:
        # at least two warm-up steps: OneCycleLR divides by the warm-up length minus one
        warmup = max(0.25, 2.5 / total)
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total, pct_start=warmup)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size + (1 if n % batch_size > 1 else 0)


@torch.no_grad()
def evaluate(model: nn.Module, split: data_mod.Split, device: str) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in prediction mode."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for x, y in data_mod.ordered_batches(split, EVAL_BATCH):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return loss_sum / len(split), correct / len(split)


def train_epoch(model, optimizer, scheduler, split, config: TrainConfig, generator, reporter: Reporter) -> tuple[float, float, float]:
    """One pass over the training split; returns (mean loss, accuracy, seconds in fwd/bwd/step)."""
    model.train()
    loss_sum, busy = 0.0, 0.0
    outputs, targets = [], []  # scored once per epoch, not batch by batch
    seen = 0
    moves = torch.device(config.device).type != "cpu"  # batches are built on the CPU
    for x, y in data_mod.shuffled_batches(split, config.batch_size, generator, flip=config.augment):
        if moves:
            x, y = x.to(config.device, non_blocking=True), y.to(config.device, non_blocking=True)
        start = time.perf_counter()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        busy += time.perf_counter() - start
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise Diverged(f"training loss became {loss_value} at sample {seen + len(y)}")
        loss_sum += loss_value * len(y)
        seen += len(y)
        outputs.append(logits.detach())
        targets.append(y)
        reporter.batch(loss_value)
    correct = int((torch.cat(outputs).argmax(1) == torch.cat(targets)).sum())
    return loss_sum / seen, correct / seen, busy


def population_batches(split: data_mod.Split, flip: bool, device: str):
    """The training distribution (mirrors included when training flips), in order: population
    statistics must describe what the network was trained on, not the un-augmented images."""
    images = split.training_distribution(flip)
    return lambda: (x.to(device) for x in data_mod.consecutive_batches(images, EVAL_BATCH))


def serialize_checkpoint(model: nn.Module, running_state: dict, population: dict, config: TrainConfig) -> bytes:
    """float32 weights with running averages, plus each BN layer's population statistics."""
    buffer = io.BytesIO()
    torch.save({
        "state_dict": {k: v.detach().cpu() for k, v in running_state.items()},
        "population": {name: {"mean": m.cpu(), "var": v.cpu()} for name, (m, v) in population.items()},
        "config": config.identity(),
    }, buffer)
    return buffer.getvalue()


def deserialize_checkpoint(blob: bytes) -> dict:
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def run_fields(config: TrainConfig, seed: int, grid_seeds: int | None = None, diagnostics: bool = False) -> dict:
    fields = dict(config.__dict__)
    fields.update(seed=seed, grid_seeds=grid_seeds, diagnostics=diagnostics, **provenance(config.device))
    return fields


@contextlib.contextmanager
def heartbeat(store: Store, run_id: int) -> Iterator[None]:
    """Touch the run's heartbeat every HEARTBEAT_S seconds from a background thread."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(StoreError):
                store.heartbeat(run_id)

    thread = threading.Thread(target=beat, name=f"bnrun-heartbeat-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def fit(config: TrainConfig, seed: int, dataset: data_mod.FashionMNISTData, store: Store, run_id: int,
        reporter: Reporter, diagnostics: bool = False) -> FinalMetrics:
    """Train, store each epoch, then compute population statistics and the test metrics."""
    torch.manual_seed(seed)
    model = build_model(config.arch, config.bn, config.bn_impl, config.fused).to(config.device)
    probes = None
    if diagnostics:
        probes = Diagnostics(dataset, config.batch_size, config.device, lambda records: store.add_diagnostics(run_id, records))
        probes.at_initialization(model)
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer, steps_per_epoch(len(dataset.train), config.batch_size))
    best_val = 0.0
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        reporter.epoch_started(epoch, config.epochs, steps_per_epoch(len(dataset.train), config.batch_size))
        train_loss, train_acc, busy = train_epoch(model, optimizer, scheduler, dataset.train, config, generator, reporter)
        val_loss, val_acc = evaluate(model, dataset.val, config.device)
        if not math.isfinite(val_loss):  # e.g. running statistics overflowed while the batch loss stayed finite
            raise Diverged(f"validation loss became {val_loss} after epoch {epoch}")
        best_val = max(best_val, val_acc)
        record = EpochRecord(epoch, train_loss, train_acc, val_loss, val_acc, lr, time.perf_counter() - start, busy)
        store.add_epoch(run_id, record)
        if probes is not None:
            probes.after_epoch(model, epoch)
        reporter.epoch_finished(record)
    return finish(model, config, dataset, store, run_id, best_val, record)


def finish(model, config, dataset, store, run_id, best_val, last: EpochRecord) -> FinalMetrics:
    test_loss_running, test_acc_running = evaluate(model, dataset.test, config.device)
    running_state = {k: v.clone() for k, v in model.state_dict().items()}
    population = recompute_population_statistics(model, population_batches(dataset.train, config.augment, config.device))
    test_loss_pop, test_acc_pop = evaluate(model, dataset.test, config.device)
    metrics = FinalMetrics(last.train_loss, last.train_acc, last.val_acc, best_val, test_loss_running,
                           test_acc_running, test_loss_pop, test_acc_pop)
    store.complete_run(run_id, metrics, serialize_checkpoint(model, running_state, population, config))
    return metrics


def run_trial(config: TrainConfig, seed: int, dataset, store: Store, reporter: Reporter,
              grid_seeds: int | None = None, diagnostics: bool = False) -> tuple[int, str]:
    """One trial, start to honest end; returns (run id, final status). KeyboardInterrupt
    (Ctrl-C or SIGTERM) marks the trial interrupted and propagates."""
    fields = run_fields(config, seed, grid_seeds, diagnostics)
    run_id = store.start_run(fields, config.key(), json.dumps(config.identity(), sort_keys=True))
    reporter.trial_started(run_id, config, seed)
    try:
        with heartbeat(store, run_id):
            metrics = fit(config, seed, dataset, store, run_id, reporter, diagnostics)
    except KeyboardInterrupt:
        store.end_run(run_id, "interrupted", "interrupted by the user (SIGINT/SIGTERM)")
        reporter.trial_finished(run_id, "interrupted", None)
        raise
    except Diverged as error:
        return _end(store, reporter, run_id, "diverged", str(error))
    except StoreError as error:
        _end(store, reporter, run_id, "failed", str(error))
        raise
    except Exception as error:  # noqa: BLE001 - any training failure is recorded; the sweep goes on
        return _end(store, reporter, run_id, "failed", f"{type(error).__name__}: {error}")
    reporter.trial_finished(run_id, "completed", metrics)
    return run_id, "completed"


def _end(store: Store, reporter: Reporter, run_id: int, status: str, note: str) -> tuple[int, str]:
    with contextlib.suppress(StoreError):  # the store itself may be what failed (disk full)
        store.end_run(run_id, status, note[:2000])
    reporter.trial_finished(run_id, status, None, note)
    return run_id, status


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM end a trial the way Ctrl-C does."""
    def handler(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class DatasetCache:
    """The data loaded once per training subset a grid asks for (the last one kept)."""

    def __init__(self, data_dir: Path | None) -> None:
        self.data_dir, self.subset, self.dataset = data_dir, None, None

    def get(self, subset: int | None) -> data_mod.FashionMNISTData:
        if self.dataset is None or subset != self.subset:
            self.subset, self.dataset = subset, data_mod.load(self.data_dir, subset)
        return self.dataset


def run_sweep(sweep: SweepConfig, store: Store, reporter: Reporter) -> SweepResult:
    """Every trial of the grid; completed ones are skipped unless forced. A diverged trial or a
    training error does not stop the sweep; a store error does (nothing more could be recorded)."""
    result = SweepResult()
    trials = sweep.trials()
    datasets = DatasetCache(sweep.data_dir)
    with sigterm_as_interrupt():
        reporter.sweep_started(len(trials), sweep.describe())
        for config, seed in trials:
            done = None if sweep.force else store.find_completed(config.key(), seed, sweep.diagnostics, OUTCOMES)
            if done is not None:
                result.skipped.append(done.id)
                reporter.trial_skipped(done, config, seed)
                continue
            run_id, status = run_trial(config, seed, datasets.get(config.train_subset), store, reporter,
                                       len(sweep.seeds), sweep.diagnostics)
            {"completed": result.completed, "diverged": result.diverged}.get(status, result.failed).append(run_id)
        reporter.sweep_finished()
    return result


