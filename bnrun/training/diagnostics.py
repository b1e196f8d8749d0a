"""Batch-norm diagnostics recorded beside a trial (`bnrun train --diagnostics`).

All probes run on a deep copy of the model in training mode (batch statistics: the loss SGD
actually descends), on fixed probe batches that are the same for every trial, so they touch
neither the trial's weights, nor its running statistics, nor its random streams: a trial trains
bit-identically with and without diagnostics.

- `loss_ratio` (epoch 0, x = η): Bjorck et al. 2018, "Understanding Batch Normalization"
  (arXiv:1806.02375), one step of size η from the initialization on the batch B itself:
  r(η) = L_B(w − η∇L_B(w)) / L_B(w), averaged over the probe batches; r < 1 means the step helped.
- `grad_norm` (per layer), `bn_input_mean`, `bn_input_std` (per BN layer), every epoch (0 = init):
  ‖∇_θ L_B‖₂ over each layer's parameters, and the mean and standard deviation of every value
  entering each BN layer (the "internal covariate shift" quantities of Ioffe & Szegedy 2015).
- `val_acc_batch_stats` (every epoch): validation accuracy with BN in training mode, i.e. each
  batch normalized by its own statistics (`bnrun.training.evaluation`, under the trial's precision),
  next to the epoch's prediction-mode `val_acc`: BN's train/test discrepancy (Wu & Johnson 2021,
  "Rethinking 'Batch' in BatchNorm", arXiv:2105.07576).
- `loss_range`, `grad_change`, `beta_smoothness` (every epoch): Santurkar et al. 2018, "How Does
  Batch Normalization Help Optimization?" (arXiv:1805.11604), along the gradient g = ∇L_B(w) at
  steps η ∈ SMOOTHNESS_STEPS: max − min of L_B(w − ηg) over η (η = 0 included), max ‖∇L_B(w − ηg) − g‖₂,
  and the effective β-smoothness max ‖∇L_B(w − ηg) − g‖₂ / (η‖g‖₂).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnrun.nn import batchnorm_layers
from bnrun.training.data import FashionMNISTData, Split
from bnrun.training.evaluation import evaluate_with_batch_statistics
from bnrun.training.results import DiagnosticRecord

PROBE_SEED = 1_805_11604  # fixed: every trial is probed on the same images
PROBE_BATCHES = 4
LOSS_RATIO_ETAS = tuple(10.0 ** (k / 2) for k in range(-6, 3))  # 1e-3 … 10, half-decade steps
SMOOTHNESS_STEPS = (0.05, 0.1, 0.2, 0.4)
Batch = tuple[Tensor, Tensor]


def probe_batches(split: Split, batch_size: int, device: str) -> list[Batch]:
    """PROBE_BATCHES fixed batches of the trial's batch size, drawn with their own generator."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    count = min(len(split), PROBE_BATCHES * batch_size)
    order = torch.randperm(len(split), generator=generator)[:count]
    images, labels = split.images[order].to(device), split.labels[order].to(device)
    return [(images[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, count, batch_size)
            if min(batch_size, count - i) > 1]


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def training_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).train()


def batch_loss(model: nn.Module, batch: Batch) -> Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def gradient(model: nn.Module, batch: Batch) -> tuple[float, list[Tensor]]:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = batch_loss(model, batch)
    return loss.item(), list(torch.autograd.grad(loss, params))


@torch.no_grad()
def reset(model: nn.Module, origin: list[Tensor]) -> None:
    for param, start in zip((p for p in model.parameters() if p.requires_grad), origin):
        param.copy_(start)


@torch.no_grad()
def step_along(model: nn.Module, origin: list[Tensor], direction: list[Tensor], eta: float) -> None:
    """Set the weights to origin − η·direction."""
    for param, start, d in zip((p for p in model.parameters() if p.requires_grad), origin, direction):
        param.copy_(start - eta * d)


def norm(tensors: list[Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def loss_ratios(model: nn.Module, batches: list[Batch], etas=LOSS_RATIO_ETAS) -> list[DiagnosticRecord]:
    """Bjorck's r(η) at the current weights, averaged over the batches."""
    probe = training_copy(model)
    origin = [p.detach().clone() for p in probe.parameters() if p.requires_grad]
    sums = dict.fromkeys(etas, 0.0)
    for batch in batches:
        reset(probe, origin)
        loss, grads = gradient(probe, batch)
        for eta in etas:
            step_along(probe, origin, grads, eta)
            with torch.no_grad():
                sums[eta] += batch_loss(probe, batch).item() / loss
    return [
        DiagnosticRecord("loss_ratio", 0, "model", eta, finite(total / len(batches))) for eta, total in sums.items()
    ]


def layer_statistics(model: nn.Module, batches: list[Batch], epoch: int) -> list[DiagnosticRecord]:
    """Per-layer gradient norms and BN input moments on the probe batches (first batch for moments)."""
    probe = training_copy(model)
    names = {module: name for name, module in probe.named_modules()}
    captured: dict[str, Tensor] = {}

    def capture(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:  # returns None: the input is left as is
        captured.setdefault(names[module], inputs[0].detach().float())

    hooks = [layer.register_forward_pre_hook(capture) for layer in batchnorm_layers(probe)]
    try:
        probe.zero_grad(set_to_none=True)
        for batch in batches:
            (batch_loss(probe, batch) / len(batches)).backward()
    finally:
        for hook in hooks:
            hook.remove()
    records = [
        DiagnosticRecord(
            "grad_norm", epoch, name, None, finite(norm([p.grad for p in module.parameters(recurse=False)]))
        )
        for name, module in probe.named_modules()
        if any(p.grad is not None for p in module.parameters(recurse=False))
    ]
    for name, x in captured.items():
        records.append(DiagnosticRecord("bn_input_mean", epoch, name, None, finite(x.mean().item())))
        records.append(DiagnosticRecord("bn_input_std", epoch, name, None, finite(x.std().item())))
    return records


def smoothness(model: nn.Module, batches: list[Batch], epoch: int, steps=SMOOTHNESS_STEPS) -> list[DiagnosticRecord]:
    """Santurkar's loss range, gradient change and effective β-smoothness along the gradient."""
    probe = training_copy(model)
    origin = [p.detach().clone() for p in probe.parameters() if p.requires_grad]
    totals = {"loss_range": 0.0, "grad_change": 0.0, "beta_smoothness": 0.0}
    for batch in batches:
        reset(probe, origin)
        loss, grads = gradient(probe, batch)
        losses, changes, betas = [loss], [], []
        grad_norm = norm(grads)
        for eta in steps:
            step_along(probe, origin, grads, eta)
            moved_loss, moved_grads = gradient(probe, batch)
            change = norm([m - g for m, g in zip(moved_grads, grads)])
            losses.append(moved_loss)
            changes.append(change)
            betas.append(change / (eta * grad_norm) if grad_norm > 0 else math.inf)
        totals["loss_range"] += max(losses) - min(losses)
        totals["grad_change"] += max(changes)
        totals["beta_smoothness"] += max(betas)
    return [
        DiagnosticRecord(kind, epoch, "model", None, finite(total / len(batches))) for kind, total in totals.items()
    ]


class Diagnostics:
    """What a trial calls at initialization and after each epoch; records go to `save`."""

    def __init__(
        self,
        dataset: FashionMNISTData,
        batch_size: int,
        device: str,
        save: Callable[[list[DiagnosticRecord]], None],
        precision: str = "fp32",
    ) -> None:
        self.batches = probe_batches(dataset.train, batch_size, device)
        self.dataset, self.batch_size, self.device, self.save = dataset, batch_size, device, save
        self.precision = precision

    def at_initialization(self, model: nn.Module) -> None:
        self._timed(0, lambda: loss_ratios(model, self.batches) + layer_statistics(model, self.batches, 0))

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        def probes() -> list[DiagnosticRecord]:
            _, accuracy = evaluate_with_batch_statistics(
                model, self.dataset.val, self.batch_size, self.device, self.precision
            )
            return (
                [DiagnosticRecord("val_acc_batch_stats", epoch, "model", None, accuracy)]
                + layer_statistics(model, self.batches, epoch)
                + smoothness(model, self.batches, epoch)
            )

        self._timed(epoch, probes)

    def _timed(self, epoch: int, probes: Callable[[], list[DiagnosticRecord]]) -> None:
        start = time.perf_counter()
        records = probes()
        records.append(DiagnosticRecord("seconds", epoch, "model", None, time.perf_counter() - start))
        self.save(records)
