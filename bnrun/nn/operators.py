"""The fused CPU kernel's operators (`torch.ops.bnrun.*`, registered by `csrc/bn_ops.cpp`): their
fake implementations, so that torch.compile and torch.export trace them without touching data,
and the calls bnrun makes of them.

The operators, per schema (each build registers them in its own namespace, `OPS_NAMESPACE` for
this machine's build):
  batch_norm_train(input, weight?, bias?, eps, relu) -> (y, stats)      differentiable in input,
      weight, bias; stats: the (5, C) rows mean, biased var, 1/σ̂, a, k
  batch_norm_train_backward(grad_output, input, stats, weight?, relu) -> (dx, dγ, dβ)
  update_running_stats(stats, running_mean!, running_var!, num_batches_tracked!?, count, factor)
  batch_norm_eval(input, mean, var, weight?, bias?, eps, relu) -> (y, coefficients)
      differentiable in input, mean, var, weight, bias; coefficients: the (3, C) rows 1/σ̂, a, k
  batch_norm_eval_backward(grad_output, input, coefficients, relu) -> dx
  batch_norm_eval_backward_statistics(grad_output, input, mean, weight?, coefficients, relu)
      -> (dμ, dσ², dγ, dβ)
  moments(input) -> (mean, Σ(x − μ)²), float64
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
from torch import Tensor

OPS_NAMESPACE = "bnrun"
# The op-math type of each input dtype the kernel serves: its per-channel tensors' dtype.
OPMATH = {torch.float32: torch.float32, torch.float64: torch.float64, torch.bfloat16: torch.float32,
          torch.float16: torch.float32}
STAT_ROWS, COEFFICIENT_ROWS = 5, 3


def unsupported(x: Tensor, *per_channel: Tensor | None) -> str:
    """Why the kernel cannot serve `x` (a CPU tensor) with these per-channel tensors, or "" when
    it can (the operators' own input checks, asked before calling them)."""
    wanted = OPMATH.get(x.dtype)
    if wanted is None:
        return f"input dtype {x.dtype}"
    if x.dim() < 2 or x.numel() == 0:
        return "empty input"
    for t in per_channel:
        if t is None:
            continue
        if t.dtype != wanted:
            return f"{t.dtype} parameters or buffers with {x.dtype} input"
        if not (t.is_cpu and t.is_contiguous()) or t.numel() != x.shape[1]:
            return "non-contiguous or non-CPU parameters or buffers, or not one value per channel"
    return ""


def train(ops, x: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
          running_var: Tensor | None, factor: float, eps: float, relu: bool = False,
          counter: Tensor | None = None) -> Tensor:
    """The training step through the operators of namespace `ops` (input `unsupported` accepts):
    y, and the running statistics (when given) moved by `factor`, `counter` incremented."""
    y, stats = ops.batch_norm_train.default(x, weight, bias, eps, relu)
    if running_mean is not None:
        count = x.numel() // x.shape[1]
        ops.update_running_stats.default(stats, running_mean, running_var, counter, count, factor)
    return y


def predict(ops, x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
            relu: bool = False) -> Tensor:
    """Prediction mode through the operators of namespace `ops`."""
    return ops.batch_norm_eval.default(x, mean, var, weight, bias, eps, relu)[0]


def moments(ops, x: Tensor) -> tuple[int, Tensor, Tensor]:
    """(count, mean, Σ(x − μ)²) per channel in float64 through the operators of namespace `ops`."""
    mean, squares = ops.moments.default(x)
    return x.numel() // x.shape[1], mean, squares


def _dense_format(x: Tensor) -> torch.memory_format:
    """The layout the kernels write: channels_last for channels_last 4D input, else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _like_input(x: Tensor) -> Tensor:
    return torch.empty_like(x, memory_format=_dense_format(x))


def _per_channel(x: Tensor, rows: int | None = None, dtype: torch.dtype | None = None) -> Tensor:
    shape = (x.shape[1],) if rows is None else (rows, x.shape[1])
    return x.new_empty(shape, dtype=dtype or OPMATH[x.dtype])


def _fake_train(x, weight, bias, eps, relu):
    return _like_input(x), _per_channel(x, STAT_ROWS)


def _fake_train_backward(grad_output, x, stats, weight, relu):
    return _like_input(x), _per_channel(x), _per_channel(x)


def _fake_update_running_stats(stats, running_mean, running_var, num_batches_tracked, count, factor):
    return None


def _fake_eval(x, mean, var, weight, bias, eps, relu):
    return _like_input(x), _per_channel(x, COEFFICIENT_ROWS, mean.dtype)


def _fake_eval_backward(grad_output, x, coefficients, relu):
    return _like_input(x)


def _fake_eval_backward_statistics(grad_output, x, mean, weight, coefficients, relu):
    return tuple(torch.empty_like(mean) for _ in range(4))


def _fake_moments(x):
    return _per_channel(x, dtype=torch.float64), _per_channel(x, dtype=torch.float64)


FAKES = {
    "batch_norm_train": _fake_train,
    "batch_norm_train_backward": _fake_train_backward,
    "update_running_stats": _fake_update_running_stats,
    "batch_norm_eval": _fake_eval,
    "batch_norm_eval_backward": _fake_eval_backward,
    "batch_norm_eval_backward_statistics": _fake_eval_backward_statistics,
    "moments": _fake_moments,
}


@functools.cache
def register_fakes(namespace: str) -> None:
    """Registers the fake implementations of a loaded build's operators (once per namespace)."""
    for name, fake in FAKES.items():
        torch.library.register_fake(f"{namespace}::{name}", fake)


class CpuKernel:
    """One loaded build of the kernel: its operators (`ops`, torch.ops.<namespace>) and what the
    build holds (`isa()`, `stream_bytes`, `to_bf16`); `train` and `eval` call its eager binding (the
    operators' kernels and autograd nodes in one call, without the dispatcher), `moments` its
    operator; each says when it cannot serve an input."""

    def __init__(self, module: ModuleType):
        self.module = module
        self.namespace: str = module.namespace
        self.stream_bytes: int = module.stream_bytes
        register_fakes(self.namespace)
        self.ops = getattr(torch.ops, self.namespace)

    def isa(self) -> str:
        return self.module.isa()

    def to_bf16(self, x: Tensor) -> Tensor:
        return self.module.to_bf16(x)

    def train(self, x: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
              running_var: Tensor | None, factor: float, eps: float, relu: bool = False,
              counter: Tensor | None = None) -> tuple[Tensor | None, str]:
        """(y, "") from the training step, or (None, why) for input the kernel does not serve."""
        return self.module.train_step(x, weight, bias, running_mean, running_var, counter, factor, eps, relu)

    def eval(self, x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
             relu: bool = False) -> tuple[Tensor | None, str]:
        """(y, "") in prediction mode, or (None, why) for input the kernel does not serve."""
        return self.module.eval_step(x, mean, var, weight, bias, eps, relu)

    def moments(self, x: Tensor) -> tuple[int, Tensor | None, Tensor | None]:
        """(count, mean, Σ(x − μ)²), or (0, None, None) for input the kernel does not serve."""
        if unsupported(x):
            return 0, None, None
        return moments(self.ops, x)
