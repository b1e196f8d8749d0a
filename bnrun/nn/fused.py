"""The fast path (`fused=True`, `bnrun train`'s default): the same batch-norm math with one call
per layer, and for BN before the activation, g(BN(x)) with g = ReLU, the activation in the same
call; prediction mode and the per-batch moments of population statistics as one pass each.

On CPU (float32/float64, and bfloat16/float16 activations with float32 statistics and parameters;
contiguous or channels_last) it is `csrc/bn_cpu.cpp`: the statistics, normalization, affine step,
running-statistics update and the hand-derived backward written as C++ loops, with the autograd
node in C++ too, so a layer costs a few passes over memory and no Python per tensor op. It is
built once per machine by `torch.utils.cpp_extension` (about 25 s; cached under
`~/.cache/torch_extensions`) and loaded once per process. On other devices (CUDA) the eager
training step is compiled by torch.compile instead. Where either build is unavailable (no C++
compiler, no ninja, an unsupported platform), or the kernel cannot serve an input (say float32
statistics with float64 input), it warns once per process and reason and runs the eager path;
`train_step` says which path ran (`PATHS`), and every trial records it.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import warnings
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch
from torch import Tensor

from bnrun.nn.functional import batch_norm_eval, batch_norm_eval_coefficients, batch_norm_train_and_track

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
) -> tuple[Tensor, str]:
    """`functional.batch_norm_train_and_track` (then ReLU when `relu`) through the fastest path
    available for `x`; returns the output and the path that ran (one of `PATHS`)."""
    if x.is_cpu:
        kernel = cpu_kernel()
        if kernel is None:
            return eager_step(relu)(x, weight, bias, running_mean, running_var, factor, eps), EAGER
        y, why_not = kernel.train(x, weight, bias, running_mean, running_var, factor, eps, relu)
        if y is not None:
            return y, FUSED_CPU
        _warn_once(f"bnrun: the fused CPU batch norm cannot serve this input ({why_not}); using the eager path")
        return eager_step(relu)(x, weight, bias, running_mean, running_var, factor, eps), EAGER
    # factor travels as a tensor so that a changing value (momentum=None) never recompiles
    factor_tensor = torch.tensor(factor, dtype=x.dtype if running_mean is None else running_mean.dtype, device=x.device)
    kernel = compiled_kernel(relu)
    y = kernel(x, weight, bias, running_mean, running_var, factor_tensor, eps)
    return y, COMPILED if kernel.compiled is not None else EAGER


def eval_step(x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
              relu: bool = False) -> Tensor:
    """Prediction mode (`functional.batch_norm_eval`, then ReLU when `relu`) as one pass of the
    C++ kernel on CPU; the eager ops elsewhere or for input the kernel does not handle."""
    kernel = cpu_kernel() if x.is_cpu else None
    if kernel is not None:
        scale, shift = batch_norm_eval_coefficients(mean, var, weight, bias, eps)
        y = kernel.affine(x, scale.contiguous(), shift.contiguous(), relu)
        if y is not None:
            return y
        _warn_once(f"bnrun: the fused CPU batch norm cannot serve this {x.dtype} input in prediction mode; using the eager path")
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


def _cpp_extension() -> ModuleType:
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" noise
    from torch.utils import cpp_extension

    return cpp_extension


def cpu_kernel_built() -> bool:
    """Whether this machine's extension cache already holds a build of the kernel (torch rebuilds
    it anyway if the source changed since)."""
    build_directory = _cpp_extension()._get_build_directory(KERNEL_NAME, verbose=False)
    return (Path(build_directory) / f"{KERNEL_NAME}.so").exists()


@functools.cache
def cpu_kernel() -> ModuleType | None:
    """The C++ extension, built on first use and loaded once per process; None where unavailable."""
    try:
        _put_pip_ninja_on_path()
        return _cpp_extension().load(
            name=KERNEL_NAME,
            sources=[str(CPU_SOURCE)],
            extra_cflags=["-O3", "-fopenmp", *_vector_flags()],
            extra_ldflags=["-fopenmp"],
        )
    except Exception as error:  # noqa: BLE001 - any build failure means "no fast path here"
        _warn_fallback(error)
        return None


def _vector_flags() -> list[str]:
    """AVX2/FMA where torch itself runs AVX2 or AVX-512 kernels on this CPU (the build is per machine)."""
    return ["-mavx2", "-mfma"] if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") else []


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
    _warn_once(f"bnrun: fused batch norm unavailable ({first_line[:200]}); using the eager path")


@functools.cache
def _warn_once(message: str) -> None:
    """Each distinct fallback is said once per process (warnings' own registry is per call site
    and is reset by test tools; this is not)."""
    warnings.warn(message, RuntimeWarning, stacklevel=4)


@functools.cache
def compiled_kernel(relu: bool = False) -> _CompiledOrEager:
    """The process-wide torch.compile'd training step (then ReLU when `relu`) for non-CPU devices,
    compiled once per shape."""
    return _CompiledOrEager(eager_step(relu))
