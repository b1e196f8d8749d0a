"""The hardware a trial trains on: the device it resolves to, the CPU facts (model, ISA features)
that select kernels and so can change the numerics of the same seed, and on CUDA the numerics
settings a trial runs under and the CUDA, cuDNN and driver versions."""

from __future__ import annotations

import functools
import platform
import re
import subprocess
from pathlib import Path

import torch

# CPU flags (as /proc/cpuinfo names them) that select different kernels or rounding paths.
NUMERIC_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "avx_vnni")


def resolve_device(name: str) -> str:
    """auto → cuda when available, else cpu; ValueError for an absent cuda."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is available")
    return name


def trains_on_cpu(device: str) -> bool:
    return device != "cuda" and resolve_device(device) == "cpu"  # resolve_device refuses an absent cuda


@functools.cache
def cpu_info() -> tuple[str, str]:
    """(CPU model name, comma list of the NUMERIC_FEATURES it has)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return model, ",".join(f for f in NUMERIC_FEATURES if f in flags)


def gpu_name(device: str) -> str | None:
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(torch.device(device))


# The numerics every CUDA trial runs under (`apply_cuda_settings`), recorded with its run
# (`cuda_settings`): fp32 convolutions and matrix products in full fp32 (torch's default lets
# cuDNN round their inputs to TF32 on Ampere and later GPUs, a 10-bit mantissa), and cuDNN's
# deterministic algorithms without benchmark-mode autotuning, so a seed repeats on one GPU.
TF32 = False
CUDNN_DETERMINISTIC = True


def on_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


def cuda_settings(device: str) -> dict[str, bool | None]:
    """{tf32, cudnn_deterministic} for a trial on `device` (None off CUDA, where neither applies)."""
    if not on_cuda(device):
        return {"tf32": None, "cudnn_deterministic": None}
    return {"tf32": TF32, "cudnn_deterministic": CUDNN_DETERMINISTIC}


def apply_cuda_settings(device: str) -> None:
    """Set `cuda_settings(device)` process-wide (nothing off CUDA)."""
    if not on_cuda(device):
        return
    precision = "tf32" if TF32 else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision
    torch.backends.cudnn.deterministic = CUDNN_DETERMINISTIC
    torch.backends.cudnn.benchmark = not CUDNN_DETERMINISTIC


def cuda_versions(device: str) -> dict[str, str | None]:
    """{cuda_version, cudnn_version, gpu_driver} of a trial on `device`: the CUDA runtime torch
    was built with, the cuDNN it loaded and the NVIDIA driver (None each off CUDA)."""
    if not on_cuda(device):
        return {"cuda_version": None, "cudnn_version": None, "gpu_driver": None}
    return {"cuda_version": torch.version.cuda, "cudnn_version": cudnn_version(), "gpu_driver": gpu_driver()}


def cudnn_version() -> str | None:
    """cuDNN's version as x.y.z (it reports 90100 for 9.1.0, and 8902 for 8.9.2 before 9)."""
    if not torch.backends.cudnn.is_available():
        return None
    number = torch.backends.cudnn.version()
    if number >= 90000:
        return f"{number // 10000}.{number // 100 % 100}.{number % 100}"
    return f"{number // 1000}.{number // 100 % 10}.{number % 100}"


NVIDIA_PROC_VERSION = Path("/proc/driver/nvidia/version")


@functools.cache
def gpu_driver() -> str | None:
    """The NVIDIA driver's version (e.g. 550.54.15): from the kernel module on Linux, else nvidia-smi."""
    try:
        match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)", NVIDIA_PROC_VERSION.read_text())
        if match:
            return match.group(1)
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines() if out.returncode == 0 else []
    return lines[0].strip() if lines else None
