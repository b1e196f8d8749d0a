"""The opt-in fast path: the same batch-norm math, compiled once per process by torch.compile.

The whole training-mode step (`batch_norm_train_and_track`: the custom autograd Function with
its hand-derived backward, plus the running-statistics update) is one compiled region, so
Inductor fuses the statistics, normalization and affine passes, and separately the backward's
two reductions and elementwise pass, into a few loops, and Python runs one call per layer
instead of a dozen small ops. Where compilation is unavailable (no C++ compiler, an unsupported
platform) it warns once and falls back to the eager function.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import torch

from bnrun.nn.functional import batch_norm_train_and_track


class _CompiledOrEager:
    """Calls the compiled kernel; on the first compile failure warns and stays eager for good."""

    def __init__(self, eager: Callable):
        self.eager = eager
        self.compiled: Callable | None = _try_compile(eager)

    def __call__(self, *args):
        if self.compiled is None:
            return self.eager(*args)
        try:
            return self.compiled(*args)
        except Exception as error:  # noqa: BLE001 - any backend failure means "no fast path here"
            _warn_fallback(error)
            self.compiled = None
            return self.eager(*args)


def _try_compile(fn: Callable) -> Callable | None:
    try:
        return torch.compile(fn, fullgraph=True, dynamic=False)
    except Exception as error:  # noqa: BLE001
        _warn_fallback(error)
        return None


def _warn_fallback(error: Exception) -> None:
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    warnings.warn(
        f"bnrun: fused batch norm unavailable ({first_line[:200]}); using the eager path",
        RuntimeWarning,
        stacklevel=3,
    )


@functools.cache
def train_kernel() -> _CompiledOrEager:
    """The process-wide compiled training step (created on first use, compiled once per shape)."""
    return _CompiledOrEager(batch_norm_train_and_track)
