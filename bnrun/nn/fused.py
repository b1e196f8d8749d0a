"""The opt-in fast path: the same batch-norm math, compiled once per process by torch.compile.

Inductor fuses the statistics, normalization and affine steps of `normalize_forward` (and the
two reductions plus the elementwise pass of `normalize_backward`) into a few loops, so the
custom layer runs close to torch's native kernel. Where compilation is unavailable (no C++
compiler, an unsupported platform) the kernels warn once and fall back to the eager functions.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import torch

from bnrun.nn.functional import normalize_backward, normalize_forward


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
def forward_kernel() -> _CompiledOrEager:
    """The process-wide compiled forward (created, and compiled, on first use only)."""
    return _CompiledOrEager(normalize_forward)


@functools.cache
def backward_kernel() -> _CompiledOrEager:
    """The process-wide compiled backward."""
    return _CompiledOrEager(normalize_backward)
