"""The fast path (`fused=True`, `bnrun train`'s default): the same batch-norm math with one call
per layer, and for BN before the activation, g(BN(x)) with g = ReLU, the activation in the same
call; prediction mode and the per-batch moments of population statistics as one pass each. This
module chooses the path of each call; the paths themselves live beside it.

On CPU (float32/float64, and bfloat16/float16 activations with float32 statistics and parameters;
contiguous or channels_last) the step is the C++ kernel's operators (`operators.py`,
`torch.ops.bnrun.*`: the statistics, normalization, affine step, running-statistics update and the
hand-derived backward written as loops, their autograd in C++), so a layer costs a few passes over
memory and no Python per tensor op; torch.compile and torch.export see each operator as one opaque
node, and eager calls take the same kernels in one direct call (`traced`). The kernel is built once per machine for this CPU's vector instructions (`kernel_build.py`).
On other devices (CUDA) the eager training step is compiled by torch.compile instead
(`compiled.py`). Where either is unavailable (no C++ compiler, no ninja, an unsupported platform),
or the kernel cannot serve an input (say float32 statistics with float64 input), it warns once per
process and reason and runs the eager path; `train_step` says which path ran (`PATHS`), and every
trial records it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnrun.nn import operators
from bnrun.nn.compiled import RECOMPILE_LIMIT, compiled_kernel, compiled_train_step, warm_up
from bnrun.nn.functional import batch_norm_eval
from bnrun.nn.kernel_build import (
    ISA_FLAGS,
    KERNEL_VERSION,
    cpu_kernel,
    cpu_kernel_built,
    kernel_isa,
    supported_isas,
)
from bnrun.nn.paths import COMPILED, EAGER, FUSED_CPU, PATHS, eager_step, warn_once

# Names other layers import from here: the kernel's build and the compiled path.
__all__ = ["COMPILED", "EAGER", "FUSED_CPU", "ISA_FLAGS", "KERNEL_VERSION", "PATHS", "RECOMPILE_LIMIT", "compiled_kernel",
           "compiled_train_step", "cpu_kernel", "cpu_kernel_built", "cpu_train_step", "eval_step", "kernel_isa", "moments",
           "supported_isas", "train_step", "warm_up"]

OPS = getattr(torch.ops, operators.OPS_NAMESPACE)  # this machine's build's operators, once loaded


@torch.compiler.assume_constant_result
def cpu_kernel_ready() -> bool:
    """Whether the C++ kernel is loaded (building and loading it on first call). A constant to
    torch.compile and torch.export, which call it once while tracing, not the traced graph."""
    return cpu_kernel() is not None


def traced(x: Tensor) -> bool:
    """Whether the call must go through the dispatcher: `x` is traced (torch.compile, torch.export,
    torch.jit.trace, a tensor subclass such as a fake tensor) or transformed (torch.func's grad and vmap), or a
    mode watches the dispatch (a TorchDispatchMode or TorchFunctionMode, e.g. a FLOP counter). Then the call
    goes through the registered operators, which each of these sees as one node. Plain eager calls take the
    kernel's own binding, the same kernels and autograd nodes in one call without the dispatcher's round trips
    (a few microseconds per layer: a tenth of a small MLP layer's step)."""
    # is_compiling first: torch.compile's tracer reads it as a constant, and it then evaluates none of
    # the torch._C predicates after it (on them, fullgraph=True breaks the graph).
    return (type(x) is not Tensor or torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
            or torch._C._len_torch_dispatch_stack() > 0 or torch._C._is_torch_function_mode_enabled()
            or torch._C._is_tracing())


def cpu_train_step(x: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
                   running_var: Tensor | None, factor: float, eps: float, relu: bool = False,
                   counter: Tensor | None = None) -> Tensor | None:
    """`train_step`'s output where it would take the kernel's eager binding (a plain CPU tensor that
    nothing traces or transforms, input the kernel serves), else None, without a word: the caller
    then calls `train_step`, which chooses the path and says why."""
    if not x.is_cpu or traced(x) or not cpu_kernel_ready():
        return None
    return cpu_kernel().train(x, weight, bias, running_mean, running_var, factor, eps, relu, counter)[0]


def train_step(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    factor: float,
    eps: float,
    relu: bool = False,
    counter: Tensor | None = None,
) -> tuple[Tensor, str]:
    """`functional.batch_norm_train_and_track` (then ReLU when `relu`) through the fastest path
    available for `x`; returns the output and the path that ran (one of `PATHS`). `counter` (a
    module's num_batches_tracked), when given, is incremented by one, in the kernel's own call."""
    if not x.is_cpu:
        return compiled_train_step(x, weight, bias, running_mean, running_var, factor, eps, relu, counter)
    if cpu_kernel_ready():
        if traced(x):
            why = operators.unsupported(x, weight, bias, running_mean, running_var)
            if not why:
                return operators.train(OPS, x, weight, bias, running_mean, running_var, factor, eps, relu, counter), FUSED_CPU
        else:
            y, why = cpu_kernel().train(x, weight, bias, running_mean, running_var, factor, eps, relu, counter)
            if y is not None:
                return y, FUSED_CPU
        warn_once(f"bnrun: the fused CPU batch norm cannot serve this input ({why}); using the eager path")
    if counter is not None:
        counter.add_(1)
    return eager_step(relu)(x, weight, bias, running_mean, running_var, factor, eps), EAGER


def eval_step(x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
              relu: bool = False) -> Tensor:
    """Prediction mode (`functional.batch_norm_eval`, then ReLU when `relu`) as one pass of the
    C++ kernel on CPU, differentiable like the eager ops; the eager ops elsewhere or for input the
    kernel does not handle."""
    if x.is_cpu and cpu_kernel_ready():
        if traced(x):
            why = operators.unsupported(x, mean, var, weight, bias)
            if not why:
                return operators.predict(OPS, x, mean, var, weight, bias, eps, relu)
        else:
            y, why = cpu_kernel().eval(x, mean, var, weight, bias, eps, relu)
            if y is not None:
                return y
        warn_once(f"bnrun: the fused CPU batch norm cannot serve this input in prediction mode ({why}); "
                  "using the eager path")
    y = batch_norm_eval(x, mean, var, weight, bias, eps)
    return torch.relu(y) if relu else y


def moments(x: Tensor) -> tuple[int, Tensor, Tensor] | None:
    """(count, mean, Σ(x − μ)²) per channel in float64 from one read of a CPU batch, or None where
    the kernel is unavailable or does not handle `x` (the caller computes them eagerly)."""
    if not (x.is_cpu and cpu_kernel_ready()):
        return None
    if operators.unsupported(x):
        warn_once(f"bnrun: the C++ kernel cannot take the moments of this {x.dtype} input; computing them eagerly")
        return None
    return operators.moments(OPS, x)
