"""Evaluation of a model on a split: in prediction mode (running averages or population
statistics, whichever the BN layers hold), and with batch statistics, each batch normalized by its
own statistics (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", arXiv:2105.07576). One rule
for the latter serves `bnrun eval --batch-stats` and the diagnostics alike."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from bnrun.training.data import Split, ordered_batches
from bnrun.training.precision import forward_logits

# Prediction-mode batches (evaluation and population statistics). 128 CNN images make 13 MB
# activations that stay in this CPU's 32 MB L3 cache; at 1000 every elementwise layer streams
# 100 MB tensors from memory: the CNN's population statistics took 135 s at 1000 and 56 s at 128
# (logits are bit-identical either way, checked on the shipped CNN and MLP checkpoints).
EVAL_BATCH = 128


class Tally:
    """The summed loss and the count of correct predictions over batches, kept on the device and
    read once (a read per batch would make the host wait for the device at every batch). The loss
    sums in float64 in batch order, as a Python float would, so the mean is the same on the CPU."""

    def __init__(self, device: str | torch.device) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        self.correct += (logits.argmax(1) == y).sum()

    def means(self, n: int) -> tuple[float, float]:
        """(mean loss, accuracy) over n items: the one read from the device."""
        return self.loss_sum.item() / n, self.correct.item() / n


@torch.no_grad()
def evaluate_split(model: nn.Module, split: Split, device: str, precision: str = "fp32") -> tuple[float, float]:
    """Mean cross-entropy and accuracy in prediction mode."""
    model.eval()
    tally = Tally(device)
    for x, y in ordered_batches(split, EVAL_BATCH):
        x, y = x.to(device), y.to(device)  # no-ops where the split is on the device already
        tally.add(forward_logits(model, x, precision, device), y)
    return tally.means(len(split))


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive batches covering all n items; a trailing batch of one joins the one before
    (a single value has no variance to normalize with)."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(start, end) for start, end in zip(starts, starts[1:] + [n])]


@torch.no_grad()
def evaluate_with_batch_statistics(model: nn.Module, split: Split, batch_size: int, device: str,
                                   precision: str = "fp32") -> tuple[float, float]:
    """Mean cross-entropy and accuracy with every BN layer normalizing each batch of `batch_size`
    images by that batch's own statistics (training mode on a copy: no running average moves)."""
    probe = copy.deepcopy(model).train()
    tally = Tally(device)
    for part in batch_slices(len(split), batch_size):
        x, y = split.images[part].to(device), split.labels[part].to(device)
        tally.add(forward_logits(probe, x, precision, device), y)
    return tally.means(len(split))
