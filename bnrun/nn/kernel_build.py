"""Building the fused CPU kernel: the vector instruction set this machine runs (`kernel_isa`), and
the C++ extension (`csrc/`) built for it by `torch.utils.cpp_extension` once per machine and
source (30-60 s, said on stderr; cached under `~/.cache/torch_extensions` or
`$TORCH_EXTENSIONS_DIR`) and loaded once per process (`cpu_kernel`), which registers its operators
in `torch.ops.bnrun` (see `operators.py`). Where it cannot be built it warns once and returns None:
the layers then run the eager path.

Each build lives in a directory of its own, named after a short hash of the kernel's sources and
compiler flags (`build_directory`): a process of another commit, whose sources differ, builds and
loads its own directory and never rebuilds the one a running process loaded; a build compiles copies of the
sources kept in its directory, so that another checkout of the same sources loads it as built. `KERNEL_VERSION`
numbers the kernel's summation orders: a change of the order in which any sum is taken (so of the
last bits of a result) is a new version."""

from __future__ import annotations

import functools
import hashlib
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
# The kernel's numerics: bump it with every change that can change a bit of a result (the order
# in which a sum is taken, a rounding), so that a trial's provenance tells which results it can
# match bit for bit. 1: the order since commit 115581f (moments blocks of 4096 values merged with
# Chan's update, gradient sums of 128 values per lane). 2: the avx512-bf16 build writes bfloat16
# through vcvtne2ps2bf16, which flushes subnormal outputs to zero; every sum, every float32 and
# float64 result and the other builds' bfloat16 are as in 1. 3: sums in register vectors of the
# build's width, the moments in one pass around a pivot (blocks of 128 values per lane merged with
# Chan's update), chunks of rows of channels of 128-row blocks; every build's outputs a vector at
# a time (results differ from 2 in float rounding only; bfloat16 rounding unchanged). 4: (N, C, S)
# input summed and written in memory order (images in chunks, blocks of images merged with Chan's
# update); the avx512-bf16 build sums bfloat16 planes by vdpbf16ps without a pivot (Σx, Σx², Σdy,
# Σdy·x), a block or pass whose sums would cancel taking the pivoted loops; blocks merged with 1/n
# multiplied rather than divided (results differ from 3 in float rounding only). 5: the avx512-bf16 build
# sums bfloat16 rows of channels (channels_last, (N, C)) by vdpbf16ps too, two rows per instruction, without
# a pivot (Σx, Σx², Σdy, Σdy·x), a block whose sums would cancel taking the pivoted loops; every other build
# and dtype is as in 4.
KERNEL_VERSION = 5
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


def _cflags(isa: str) -> list[str]:
    return compiler_flags(isa, _namespace(isa))


def compiler_flags(isa: str, namespace: str) -> list[str]:
    """The compiler's flags for a build for `isa` whose operators register in `namespace`.
    -fno-math-errno lets the loops over channels take square roots a vector at a time (errno is
    never read; the results are the same)."""
    return ["-O3", "-fno-math-errno", "-fopenmp", f"-DBNRUN_OPS_NAMESPACE={namespace}",
            f"-DBNRUN_KERNEL_VERSION={KERNEL_VERSION}", *ISA_FLAGS[isa]]


def build_directory(isa: str | None = None) -> Path:
    """Where the build for `isa` lives: beside torch's default directory for the extension, with a
    short hash of the sources, headers and flags appended (`bnrun_bn_cpu-<hash>`)."""
    name = _build_name(isa or kernel_isa())
    digest = hashlib.sha256()
    for path in (*SOURCES, *HEADERS):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(" ".join([name, *_cflags(isa or kernel_isa()), torch.__version__]).encode())
    default = Path(_cpp_extension()._get_build_directory(name, verbose=False))
    return default.with_name(f"{name}-{digest.hexdigest()[:12]}")


def cpu_kernel_built(isa: str | None = None) -> bool:
    """Whether the extension cache holds this source's build of the kernel (else loading it compiles)."""
    name = _build_name(isa or kernel_isa())
    return any(build_directory(isa).glob(f"{name}*.so"))


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
    directory = build_directory(isa)
    directory.mkdir(parents=True, exist_ok=True)
    return _cpp_extension().load(
        name=_build_name(isa),
        sources=[str(path) for path in _copied_sources(directory)],
        extra_cflags=_cflags(isa),
        extra_ldflags=["-fopenmp"],
        build_directory=str(directory),
    )


def _copied_sources(directory: Path) -> list[Path]:
    """The sources as copies in the build's own directory, the ones compiled. torch's build file names its
    sources by path, so compiling a checkout's own files rebuilt the kernel (45-50 s) whenever another
    checkout of the same sources (a clone, a study's worktree) had built it last. A copy is written only
    where it is missing or differs, by an atomic rename, so that the build's timestamps stay put."""
    copies = []
    for path in (*SOURCES, *HEADERS):
        copy, text = directory / path.name, path.read_bytes()
        if not copy.exists() or copy.read_bytes() != text:
            partial = copy.with_name(f".{copy.name}.{os.getpid()}")
            partial.write_bytes(text)
            os.replace(partial, copy)
        copies.append(copy)
    return copies[: len(SOURCES)]


def _put_pip_ninja_on_path() -> None:
    """torch's build needs `ninja` on PATH; the `ninja` wheel installs it next to the interpreter."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
