"""Where a run ran: the facts that can change the numerics of the same seed on another machine
(CPU model and the ISA features oneDNN/ATen dispatch on, torch's thread count; on CUDA the GPU,
the CUDA, cuDNN and driver versions, TF32 and cuDNN determinism) plus the code that ran
(versions, git commit). Stored with every run; `bnrun reproduce` compares them."""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

import torch

import bnrun
from bnrun.nn.fused import cpu_kernel
from bnrun.training.hardware import cpu_info, cuda_settings, cuda_versions, gpu_name

PROVENANCE_FIELDS = ("git_commit", "bnrun_version", "torch_version", "python_version", "cpu_model", "cpu_features",
                     "torch_threads", "kernel_isa", "device", "gpu_name", "cuda_version", "cudnn_version",
                     "gpu_driver", "tf32", "cudnn_deterministic")


@functools.cache
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(bnrun.__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(device: str, executor: str = "local") -> dict:
    """The run-row fields that say what ran where."""
    model, features = cpu_info()
    return dict(bnrun_version=bnrun.__version__, torch_version=torch.__version__,
                python_version=platform.python_version(), git_commit=git_commit(), cpu_model=model,
                cpu_features=features, torch_threads=torch.get_num_threads(), gpu_name=gpu_name(device),
                executor=executor, **cuda_versions(device), **cuda_settings(device))


def kernel_build(bn_path: str | None) -> str | None:
    """The fused CPU kernel's loaded build when the BN path that ran used it ("fused-cpu", alone or
    "+"-joined with others), else None: its instruction set, and from kernel version 2 on (a new
    summation or rounding) the version, e.g. avx512-bf16/v2; a bare ISA is version 1."""
    if bn_path is None or "fused-cpu" not in bn_path.split("+"):
        return None
    kernel = cpu_kernel()
    if kernel is None:
        return None
    return kernel.isa() if kernel.version == 1 else f"{kernel.isa()}/v{kernel.version}"


def differences(a: dict, b: dict) -> list[str]:
    """'torch_threads: 2 → 1' for every provenance field that differs between two runs (commits as
    their first 12 hex digits, as git abbreviates them)."""
    def shown(name: str, value):
        return value[:12] if name == "git_commit" and isinstance(value, str) else value
    return [f"{name}: {shown(name, a.get(name))} → {shown(name, b.get(name))}"
            for name in PROVENANCE_FIELDS if a.get(name) != b.get(name)]
