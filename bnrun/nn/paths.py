"""The paths a batch-norm step can take (`PATHS`, recorded by every trial), the eager step the
fast ones stand in for, and the one warning a fast path gives when it falls back to it."""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import torch
from torch import Tensor

from bnrun.errors import first_line
from bnrun.nn.functional import batch_norm_train_and_track

FUSED_CPU, COMPILED, EAGER = "fused-cpu", "compiled", "eager"
PATHS = (FUSED_CPU, COMPILED, EAGER)


def train_then_relu(*args) -> Tensor:
    return torch.relu(batch_norm_train_and_track(*args))


def eager_step(relu: bool) -> Callable[..., Tensor]:
    """The eager training step the fast paths stand in for."""
    return train_then_relu if relu else batch_norm_train_and_track


def warn_fallback(error: Exception) -> None:
    """Says that a fast path could not be built or run (the error's first line), once per reason."""
    warn_once(f"bnrun: fused batch norm unavailable ({first_line(error, 200)}); using the eager path")


@functools.cache
def warn_once(message: str) -> None:
    """Each distinct fallback is said once per process (warnings' own registry is per call site
    and is reset by test tools; this is not)."""
    warnings.warn(message, RuntimeWarning, stacklevel=4)
