"""The fast path (`fused=True`, `bnrun train`'s default): the same batch-norm math with one call
per layer, and for BN before the activation, g(BN(x)) with g = ReLU, the activation in the same
call; prediction mode and the per-batch moments of population statistics as one pass each.

On CPU (float32/float64, and bfloat16/float16 activations with float32 statistics and parameters;
contiguous or channels_last) it is `csrc/bn_cpu.cpp`: the statistics, normalization, affine step,
running-statistics update and the hand-derived backward written as C++ loops, with the autograd
nodes (training and prediction mode) in C++ too, so a layer costs a few passes over memory and no
Python per tensor op. It is built once per machine by `torch.utils.cpp_extension` (about 30 s;
cached under `~/.cache/torch_extensions`) with the vector instructions of this CPU (`kernel_isa`:
AVX-512 with or without its bfloat16 conversions, AVX2, or none) and loaded once per process. On
other devices (CUDA) the eager training step is compiled by torch.compile instead
(`compiled_train_step`): the batch dimension is dynamic, so one graph serves every batch size of a
shape (the last partial batch, evaluation batches), `warm_up` compiles a model's graphs, forward
and backward, before a trial's first epoch, and no step builds a tensor from host data. Where either
build is unavailable (no C++ compiler, no ninja, an unsupported platform), or the kernel cannot
serve an input (say float32 statistics with float64 input), it warns once per process and reason
and runs the eager path; `train_step` says which path ran (`PATHS`), and every trial records it.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import shutil
import warnings
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch
from torch import Tensor, nn

from bnrun.nn.functional import batch_norm_eval, batch_norm_train_and_track

CPU_SOURCE = Path(__file__).with_name("csrc") / "bn_cpu.cpp"
FUSED_CPU, COMPILED, EAGER = "fused-cpu", "compiled", "eager"
PATHS = (FUSED_CPU, COMPILED, EAGER)


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
    if x.is_cpu:
        kernel = cpu_kernel()
        if kernel is None:
            return _eager(x, weight, bias, running_mean, running_var, factor, eps, relu, counter), EAGER
        y, why_not = kernel.train(x, weight, bias, running_mean, running_var, factor, eps, relu, counter)
        if y is not None:
            return y, FUSED_CPU
        _warn_once(f"bnrun: the fused CPU batch norm cannot serve this input ({why_not}); using the eager path")
        return _eager(x, weight, bias, running_mean, running_var, factor, eps, relu, counter), EAGER
    return compiled_train_step(x, weight, bias, running_mean, running_var, factor, eps, relu, counter)


def compiled_train_step(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None, running_var: Tensor | None,
    factor: float, eps: float, relu: bool = False, counter: Tensor | None = None,
) -> tuple[Tensor, str]:
    """`train_step` through torch.compile (the path of every device but the CPU's; the tests run it
    on CPU tensors): the batch dimension marked dynamic, the factor a device tensor made once."""
    if counter is not None:
        counter.add_(1)
    kernel = compiled_kernel(relu)
    torch._dynamo.maybe_mark_dynamic(x, 0)
    factor_tensor = _factor_tensor(factor, x.dtype if running_mean is None else running_mean.dtype, x.device)
    y = kernel(x, weight, bias, running_mean, running_var, factor_tensor, eps)
    return y, COMPILED if kernel.compiled is not None else EAGER


@functools.lru_cache(maxsize=64)
def _factor_tensor(factor: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The running-statistics factor as a 0-dim tensor on `device`: a tensor, so that a changing
    value (momentum=None) never recompiles; made by a fill on the device (no copy from the host, no
    wait), once per value."""
    return torch.full((), factor, dtype=dtype, device=device)


def warm_up(model: nn.Module, x: Tensor) -> None:
    """Compile the training step's graphs for `model` fed batches like `x`: a training-mode forward
    and backward, and a forward without gradients (batch-statistics evaluation), on a copy of the
    model with the random streams restored, so the trial's weights, running statistics and random
    draws are untouched. Compile time then stays out of the first epoch, and a compiled backward that
    fails, which would otherwise surface in the trial's own `loss.backward()`, outside the fallback,
    turns the compiled path off here, with the usual warning."""
    probe = copy.deepcopy(model).train()
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        try:
            probe(x).float().sum().backward()
            with torch.no_grad():
                probe(x)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # noqa: BLE001 - any compile failure means "no compiled path here"
            _warn_fallback(error)
            for relu in (False, True):
                compiled_kernel(relu).compiled = None


def _eager(x, weight, bias, running_mean, running_var, factor, eps, relu, counter) -> Tensor:
    if counter is not None:
        counter.add_(1)
    return eager_step(relu)(x, weight, bias, running_mean, running_var, factor, eps)


def eval_step(x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
              relu: bool = False) -> Tensor:
    """Prediction mode (`functional.batch_norm_eval`, then ReLU when `relu`) as one pass of the
    C++ kernel on CPU, differentiable like the eager ops; the eager ops elsewhere or for input the
    kernel does not handle."""
    kernel = cpu_kernel() if x.is_cpu else None
    if kernel is not None:
        y = kernel.eval(x, mean, var, weight, bias, eps, relu)
        if y is not None:
            return y
        _warn_once(f"bnrun: the fused CPU batch norm cannot serve this {x.dtype} input in prediction mode; "
                   "using the eager path")
    y = batch_norm_eval(x, mean, var, weight, bias, eps)
    return torch.relu(y) if relu else y


def moments(x: Tensor) -> tuple[int, Tensor, Tensor] | None:
    """(count, mean, Σ(x − μ)²) per channel in float64 from one read of a CPU batch, or None where
    the kernel is unavailable or does not handle `x` (the caller computes them eagerly)."""
    kernel = cpu_kernel() if x.is_cpu else None
    if kernel is None:
        return None
    count, mean, squares = kernel.moments(x)
    if mean is None:
        _warn_once(f"bnrun: the C++ kernel cannot take the moments of this {x.dtype} input; computing them eagerly")
        return None
    return count, mean, squares


def train_then_relu(*args) -> Tensor:
    return torch.relu(batch_norm_train_and_track(*args))


def eager_step(relu: bool) -> Callable[..., Tensor]:
    """The eager training step the fast paths stand in for."""
    return train_then_relu if relu else batch_norm_train_and_track


KERNEL_NAME = "bnrun_bn_cpu"
# The kernel's builds, most capable first, with the compiler flags of each.
_AVX512 = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mprefer-vector-width=512"]
_AVX2 = ["-mavx2", "-mfma", "-mf16c"]
ISA_FLAGS: dict[str, list[str]] = {
    "avx512-bf16": [*_AVX2, *_AVX512, "-mavx512bf16"],
    "avx512": [*_AVX2, *_AVX512],
    "avx2": _AVX2,
    "scalar": [],
}
# The /proc/cpuinfo flags each build needs (x86 only; "scalar" runs anywhere).
_ISA_CPU_FLAGS = {
    "avx512-bf16": {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"},
    "avx512": {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"},
    "avx2": {"avx2", "fma", "f16c"},
}
# What torch's own dispatch allows (it honours ATEN_CPU_CAPABILITY): bnrun never goes wider.
_TORCH_CAPABILITY_ISAS = {"AVX512": {"avx512-bf16", "avx512", "avx2"}, "AVX2": {"avx2"}}


def _cpp_extension() -> ModuleType:
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" noise
    from torch.utils import cpp_extension

    return cpp_extension


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def supported_isas() -> tuple[str, ...]:
    """The kernel builds this machine can run, most capable first (always ending in "scalar")."""
    allowed = _TORCH_CAPABILITY_ISAS.get(torch.backends.cpu.get_cpu_capability(), set())
    flags = _cpu_flags()
    runnable = [isa for isa, needs in _ISA_CPU_FLAGS.items() if isa in allowed and needs <= flags]
    return (*runnable, "scalar")


def kernel_isa() -> str:
    """The vector instruction set the kernel is built for on this machine: "avx512-bf16" (AVX-512
    with its bfloat16 conversion), "avx512", "avx2" or "scalar" (whatever the compiler makes of
    plain loops without extra -m flags)."""
    return supported_isas()[0]


def _kernel_name(isa: str) -> str:
    return KERNEL_NAME if isa == kernel_isa() else f"{KERNEL_NAME}_{isa.replace('-', '_')}"


def cpu_kernel_built() -> bool:
    """Whether this machine's extension cache already holds a build of the kernel (torch rebuilds
    it anyway if the source changed since)."""
    build_directory = _cpp_extension()._get_build_directory(KERNEL_NAME, verbose=False)
    return (Path(build_directory) / f"{KERNEL_NAME}.so").exists()


@functools.cache
def cpu_kernel(isa: str | None = None) -> ModuleType | None:
    """The C++ extension, built on first use and loaded once per process; None where unavailable.
    `isa` (tests) asks for another of `supported_isas()` than this machine's own, as its own build."""
    if isa is not None and isa == kernel_isa():
        return cpu_kernel()
    isa = isa or kernel_isa()
    try:
        _put_pip_ninja_on_path()
        return _cpp_extension().load(
            name=_kernel_name(isa),
            sources=[str(CPU_SOURCE)],
            extra_cflags=["-O3", "-fopenmp", *ISA_FLAGS[isa]],
            extra_ldflags=["-fopenmp"],
        )
    except Exception as error:  # noqa: BLE001 - any build failure means "no fast path here"
        _warn_fallback(error)
        return None


def _put_pip_ninja_on_path() -> None:
    """torch's build needs `ninja` on PATH; the `ninja` wheel installs it next to the interpreter."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


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
        except torch.OutOfMemoryError:  # the device is full: the eager step would not fit either
            raise
        except Exception as error:  # noqa: BLE001 - any backend failure means "no fast path here"
            _warn_fallback(error)
            self.compiled = None
            return self.eager(*args)


RECOMPILE_LIMIT = 64


def _try_compile(fn: Callable) -> Callable | None:
    # One graph per channel count (parameters have static shapes), rank, layout, dtype and grad
    # mode: a trial with diagnostics makes 6 of one step function, a sweep over models in one
    # process more, so the limit (8 by default) is raised. Past it torch would run the step eagerly
    # and say nothing; raising instead lets `_CompiledOrEager` fall back with a warning, and the run
    # record the eager path.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    try:
        return torch.compile(fn, fullgraph=True)
    except Exception as error:  # noqa: BLE001
        _warn_fallback(error)
        return None


def _warn_fallback(error: Exception) -> None:
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    _warn_once(f"bnrun: fused batch norm unavailable ({first_line[:200]}); using the eager path")


@functools.cache
def _warn_once(message: str) -> None:
    """Each distinct fallback is said once per process (warnings' own registry is per call site
    and is reset by test tools; this is not)."""
    warnings.warn(message, RuntimeWarning, stacklevel=4)


@functools.cache
def compiled_kernel(relu: bool = False) -> _CompiledOrEager:
    """The process-wide torch.compile'd training step (then ReLU when `relu`) for non-CPU devices,
    compiled once per channel shape, layout, dtype and grad mode (batch sizes share a graph)."""
    return _CompiledOrEager(eager_step(relu))
