"""The hardware a trial trains on: the device it resolves to, and the CPU facts (model, ISA
features) that select kernels and so can change the numerics of the same seed."""

from __future__ import annotations

import functools
import platform
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
