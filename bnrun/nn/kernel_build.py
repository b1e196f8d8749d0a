"""Building the fused CPU kernel: the vector instruction set this machine runs (`kernel_isa`), and
the C++ extension (`csrc/`) built for it by `torch.utils.cpp_extension` once per machine and
source (30-60 s, said on stderr; cached under `~/.cache/torch_extensions` or
`$TORCH_EXTENSIONS_DIR`) and loaded once per process (`cpu_kernel`), which registers its operators
in `torch.ops.bnrun` (see `operators.py`). Where it cannot be built it warns once and returns None:
the layers then run the eager path."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import torch

from bnrun.nn.operators import OPS_NAMESPACE, CpuKernel
from bnrun.nn.paths import warn_fallback

CSRC = Path(__file__).with_name("csrc")
SOURCES = (CSRC / "bn_cpu.cpp", CSRC / "bn_ops.cpp")  # the loops; the operators and their autograd
HEADERS = (CSRC / "bn_cpu.h",)
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


def _build_name(isa: str) -> str:
    """The extension's name, and (after "bnrun") its operators' namespace: this machine's own
    build is `KERNEL_NAME` in `OPS_NAMESPACE`; another ISA's (tests) gets a suffix in both."""
    suffix = "" if isa == kernel_isa() else "_" + isa.replace("-", "_")
    return KERNEL_NAME + suffix


def _namespace(isa: str) -> str:
    return OPS_NAMESPACE + _build_name(isa).removeprefix(KERNEL_NAME)


def cpu_kernel_built(isa: str | None = None) -> bool:
    """Whether the extension cache holds a build of the kernel newer than its sources (else
    loading it compiles)."""
    name = _build_name(isa or kernel_isa())
    build_directory = Path(_cpp_extension()._get_build_directory(name, verbose=False))
    newest_source = max(path.stat().st_mtime for path in (*SOURCES, *HEADERS))
    return any(so.stat().st_mtime >= newest_source for so in build_directory.glob(f"{name}*.so"))


@functools.cache
def cpu_kernel(isa: str | None = None) -> CpuKernel | None:
    """The kernel's build for `isa` (default: this machine's, `kernel_isa()`), built on first use
    and loaded once per process; None, with a warning, where it cannot be built. `isa` (tests)
    asks for another of `supported_isas()` than this machine's own, as its own build."""
    if isa is not None and isa == kernel_isa():
        return cpu_kernel()
    isa = isa or kernel_isa()
    try:
        return CpuKernel(_load(isa))
    except Exception as error:  # noqa: BLE001 - any build failure means "no fast path here"
        warn_fallback(error)
        return None


def _load(isa: str) -> ModuleType:
    _put_pip_ninja_on_path()
    if not cpu_kernel_built(isa):
        print(f"bnrun: building the fused batch-norm kernel for {isa} (once per machine and source change, "
              "~30-60 s)", file=sys.stderr, flush=True)
    return _cpp_extension().load(
        name=_build_name(isa),
        sources=[str(path) for path in SOURCES],
        extra_cflags=["-O3", "-fopenmp", f"-DBNRUN_OPS_NAMESPACE={_namespace(isa)}", *ISA_FLAGS[isa]],
        extra_ldflags=["-fopenmp"],
    )


def _put_pip_ninja_on_path() -> None:
    """torch's build needs `ninja` on PATH; the `ninja` wheel installs it next to the interpreter."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
