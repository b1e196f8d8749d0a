"""Training one model: seed → weights and batch order, SGD (or Adam) under a one-cycle/cosine
schedule, per-epoch validation in prediction mode (each epoch stored as it ends), then population
statistics over the whole training set and the test set evaluated with both the running averages
and the population statistics.

What runs a trial to an honest end (claims, heartbeat, signals) is `bnrun.trial`; what plans and
dispatches a grid of them is `bnrun.sweep` (and `bnrun.ray_executor`).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn


from bnrun import data as data_mod
from bnrun.checkpoint import serialize_checkpoint
from bnrun.config import TrainConfig
from bnrun.diagnostics import Diagnostics
from bnrun.models import bn_path, model_of
from bnrun.nn import recompute_population_statistics
from bnrun.precision import autocast, logits as precision_logits
from bnrun.progress import Reporter
from bnrun.store import EpochRecord, FinalMetrics, Store

# Prediction-mode batches (evaluation and population statistics). 128 CNN images make 13 MB
# activations that stay in this CPU's 32 MB L3 cache; at 1000 every elementwise layer streams
# 100 MB tensors from memory: the CNN's population statistics took 135 s at 1000 and 56 s at 128
# (logits are bit-identical either way, checked on the shipped CNN and MLP checkpoints).
EVAL_BATCH = 128


class Diverged(Exception):
    """The training loss became NaN or infinite."""


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
def evaluate(model: nn.Module, split: data_mod.Split, device: str, precision: str = "fp32") -> tuple[float, float]:
    """Mean cross-entropy and accuracy in prediction mode."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for x, y in data_mod.ordered_batches(split, EVAL_BATCH):
        x, y = x.to(device), y.to(device)
        logits = precision_logits(model, x, precision, device)
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
        logits = precision_logits(model, x, config.precision, config.device)
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


def fit(config: TrainConfig, seed: int, dataset: data_mod.FashionMNISTData, store: Store, run_id: int,
        reporter: Reporter, diagnostics: bool = False, keep_checkpoint: bool = True) -> FinalMetrics:
    """Train, store each epoch, then compute population statistics and the test metrics."""
    torch.manual_seed(seed)
    model = model_of(config).to(config.device)
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
        val_loss, val_acc = evaluate(model, dataset.val, config.device, config.precision)
        if not math.isfinite(val_loss):  # e.g. running statistics overflowed while the batch loss stayed finite
            raise Diverged(f"validation loss became {val_loss} after epoch {epoch}")
        best_val = max(best_val, val_acc)
        record = EpochRecord(epoch, train_loss, train_acc, val_loss, val_acc, lr, time.perf_counter() - start, busy)
        store.add_epoch(run_id, record, bn_path=bn_path(model, config.bn, config.bn_impl))
        if probes is not None:
            probes.after_epoch(model, epoch)
        reporter.epoch_finished(record)
    return finish(model, config, dataset, store, run_id, best_val, record, keep_checkpoint)


def finish(model, config, dataset, store, run_id, best_val, last: EpochRecord, keep_checkpoint: bool = True) -> FinalMetrics:
    test_loss_running, test_acc_running = evaluate(model, dataset.test, config.device, config.precision)
    running_state = {k: v.clone() for k, v in model.state_dict().items()}
    with autocast(config.precision, config.device):
        population = recompute_population_statistics(model, population_batches(dataset.train, config.augment, config.device))
    test_loss_pop, test_acc_pop = evaluate(model, dataset.test, config.device, config.precision)
    train_loss_pop, train_acc_pop = evaluate(model, dataset.train, config.device, config.precision)
    metrics = FinalMetrics(last.train_loss, last.train_acc, last.val_acc, best_val, test_loss_running,
                           test_acc_running, test_loss_pop, test_acc_pop, train_loss_pop, train_acc_pop)
    checkpoint = serialize_checkpoint(model, running_state, population, config) if keep_checkpoint else None
    store.complete_run(run_id, metrics, checkpoint)
    return metrics
