"""Training one model: seed → weights and batch order, SGD (or Adam) under a one-cycle/cosine
schedule, per-epoch validation in prediction mode (each epoch reported as it ends), then population
statistics over the whole training set and the test set evaluated with both the running averages
and the population statistics. `fit` knows no store: it reports through `Callbacks`.

What runs a trial to an honest end (claims, heartbeat, signals) is `bnrun.run.trial`; what plans
and dispatches a grid of them is `bnrun.run.sweep` (and `bnrun.run.ray_executor`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from bnrun.config import TrainConfig, momentum_cycle
from bnrun.nn import fused, recompute_population_statistics
from bnrun.training.checkpoint import serialize_checkpoint
from bnrun.training.data import FashionMNISTData, Split, consecutive_batches, shuffled_batches
from bnrun.training.diagnostics import Diagnostics
from bnrun.training.evaluation import EVAL_BATCH, evaluate_split
from bnrun.training.hardware import apply_cuda_settings
from bnrun.training.models import bn_path, model_of
from bnrun.training.precision import autocast, forward_logits
from bnrun.training.results import (
    STOPPED_BY_EPOCHS,
    STOPPED_BY_TARGET,
    DiagnosticRecord,
    EpochRecord,
    FinalMetrics,
    TrainingProgress,
)


class Diverged(Exception):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class Callbacks:
    """Where `fit` reports: each epoch as it ends (with the batch-norm path it took), the outcome
    (final metrics and, when kept, the checkpoint), diagnostics records when probes are asked for,
    and progress."""

    epoch_ended: Callable[[EpochRecord, str | None], None]
    completed: Callable[[FinalMetrics, bytes | None], None]
    progress: TrainingProgress
    diagnostics: Callable[[list[DiagnosticRecord]], None] | None = None  # None: no probes


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.momentum > 0)


def onecycle_momentum(config: TrainConfig) -> dict:
    """OneCycleLR's momentum cycle: SGD's follows --momentum (bnrun.config.momentum_cycle; 0: none);
    AdamW's beta1 keeps torch's 0.85–0.95."""
    if config.optimizer != "sgd":
        return {}
    if config.momentum == 0:
        return {"cycle_momentum": False}
    low, high = momentum_cycle(config.momentum)
    return {"base_momentum": low, "max_momentum": high}


WARMUP_FRACTION, WARMUP_START = 0.25, 1 / 25  # OneCycleLR's pct_start and 1/div_factor


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    if config.schedule in ("onecycle", "onecycle-flat") and total >= 4:
        # at least two warm-up steps: OneCycleLR divides by the warm-up length minus one
        warmup = max(WARMUP_FRACTION, 2.5 / total)
        momentum = onecycle_momentum(config) if config.schedule == "onecycle" else {"cycle_momentum": False}
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total, pct_start=warmup,
                                                   **momentum)
    if config.schedule == "warmup":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_factor(max(2, round(WARMUP_FRACTION * total))))
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)


def warmup_factor(steps: int):
    """The onecycle schedule's warm-up alone: the factor on lr rises from 1/25 to 1 along a half cosine
    over `steps` steps (as OneCycleLR's), then stays at 1."""
    def factor(step: int) -> float:
        if step >= steps:
            return 1.0
        return WARMUP_START + (1 - WARMUP_START) * (1 - math.cos(math.pi * step / steps)) / 2

    return factor


def steps_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size + (1 if n % batch_size > 1 else 0)


def train_epoch(model, optimizer, scheduler, split, config: TrainConfig, generator,
                reporter: TrainingProgress) -> tuple[float, float, float]:
    """One pass over the training split; returns (mean loss, accuracy, seconds in fwd/bwd/step).
    A step never waits for the device: losses and logits stay there and are read once, at the
    epoch's end, where a NaN/inf loss is found (`epoch_scores`)."""
    model.train()
    busy = 0.0
    losses, sizes, outputs, targets = [], [], [], []
    for x, y in shuffled_batches(split, config.batch_size, generator, flip=config.augment):
        start = time.perf_counter()
        logits = forward_logits(model, x, config.precision, config.device)
        loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        busy += time.perf_counter() - start
        losses.append(loss.detach())
        sizes.append(len(y))
        outputs.append(logits.detach())
        targets.append(y)
        reporter.batch()
    loss, accuracy = epoch_scores(losses, sizes, outputs, targets)
    return loss, accuracy, busy


def epoch_scores(losses: list[torch.Tensor], sizes: list[int], outputs: list[torch.Tensor],
                 targets: list[torch.Tensor]) -> tuple[float, float]:
    """The epoch's mean loss (summed batch by batch as Python floats, as it always was) and
    accuracy, from one read of the device; Diverged names the first batch whose loss was NaN/inf."""
    loss_sum, seen = 0.0, 0
    for value, size in zip(torch.stack(losses).tolist(), sizes):
        if not math.isfinite(value):
            raise Diverged(f"training loss became {value} at sample {seen + size} (found at the end of the epoch)")
        loss_sum += value * size
        seen += size
    correct = int((torch.cat(outputs).argmax(1) == torch.cat(targets)).sum())
    return loss_sum / seen, correct / seen


def population_batches(split: Split, flip: bool, device: str):
    """The training distribution (mirrors included when training flips), in order: population
    statistics must describe what the network was trained on, not the un-augmented images."""
    images = split.training_distribution(flip)
    return lambda: (x.to(device) for x in consecutive_batches(images, EVAL_BATCH))


def fit(config: TrainConfig, seed: int, dataset: FashionMNISTData, callbacks: Callbacks,
        keep_checkpoint: bool = True) -> FinalMetrics:
    """Train, report each epoch, then compute population statistics and the test metrics. With a
    target loss, training stops after the first epoch whose training loss is at most it (the
    learning-rate schedule is still laid out over `config.epochs`, the cap). On an accelerator the
    splits are copied there once, and the numerics settings are applied first."""
    torch.manual_seed(seed)
    apply_cuda_settings(config.device)
    dataset = dataset.to(config.device)
    model = model_of(config).to(config.device)
    probes = None
    if callbacks.diagnostics is not None:
        probes = Diagnostics(dataset, config.batch_size, config.device, callbacks.diagnostics, config.precision)
        probes.at_initialization(model)
    warm_up(model, config, dataset.train)
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer, steps_per_epoch(len(dataset.train), config.batch_size))
    best_val, stopped_by = 0.0, STOPPED_BY_EPOCHS
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        callbacks.progress.epoch_started(epoch, config.epochs, steps_per_epoch(len(dataset.train), config.batch_size))
        train_loss, train_acc, busy = train_epoch(model, optimizer, scheduler, dataset.train, config, generator,
                                                  callbacks.progress)
        val_loss, val_acc = evaluate_split(model, dataset.val, config.device, config.precision)
        if not math.isfinite(val_loss):  # e.g. running statistics overflowed while the batch loss stayed finite
            raise Diverged(f"validation loss became {val_loss} after epoch {epoch}")
        best_val = max(best_val, val_acc)
        record = EpochRecord(epoch, train_loss, train_acc, val_loss, val_acc, lr, time.perf_counter() - start, busy)
        callbacks.epoch_ended(record, bn_path(model, config.bn, config.bn_impl))
        if probes is not None:
            probes.after_epoch(model, epoch)
        callbacks.progress.epoch_finished(record)
        if reached_target(config, train_loss):
            stopped_by = STOPPED_BY_TARGET
            break
    metrics, checkpoint = finish(model, config, dataset, best_val, record, keep_checkpoint)
    metrics = replace(metrics, stopped_by=stopped_by)
    callbacks.completed(metrics, checkpoint)
    return metrics


def reached_target(config: TrainConfig, train_loss: float) -> bool:
    """The epoch's training loss is at or below --target-loss (never, without one)."""
    return config.target_loss is not None and train_loss <= config.target_loss


def warm_up(model: nn.Module, config: TrainConfig, split: Split) -> None:
    """Off the CPU, compile the fused batch norm's graphs (`bnrun.nn.fused.warm_up`) before the first
    epoch's clock starts; on the CPU the C++ kernel needs none."""
    compiled = config.fused and config.bn_impl == "custom" and config.bn != "none"
    if not compiled or torch.device(config.device).type == "cpu":
        return
    with autocast(config.precision, config.device):
        fused.warm_up(model, split.images[: config.batch_size])


def finish(model: nn.Module, config: TrainConfig, dataset: FashionMNISTData, best_val: float, last: EpochRecord,
           keep_checkpoint: bool = True) -> tuple[FinalMetrics, bytes | None]:
    """The final metrics (the test split with running averages, then with population statistics) and the checkpoint."""
    test_loss_running, test_acc_running = evaluate_split(model, dataset.test, config.device, config.precision)
    running_state = {k: v.clone() for k, v in model.state_dict().items()}
    with autocast(config.precision, config.device):
        batches = population_batches(dataset.train, config.augment, config.device)
        population = recompute_population_statistics(model, batches)
    test_loss_pop, test_acc_pop = evaluate_split(model, dataset.test, config.device, config.precision)
    train_loss_pop, train_acc_pop = evaluate_split(model, dataset.train, config.device, config.precision)
    metrics = FinalMetrics(
        last.train_loss,
        last.train_acc,
        last.val_acc,
        best_val,
        test_loss_running,
        test_acc_running,
        test_loss_pop,
        test_acc_pop,
        train_loss_pop,
        train_acc_pop,
    )
    checkpoint = serialize_checkpoint(model, running_state, population, config) if keep_checkpoint else None
    return metrics, checkpoint
