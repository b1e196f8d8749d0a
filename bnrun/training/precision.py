"""A trial's numeric precision: bf16 autocast where the hardware has bf16 units (AVX512-BF16 or AMX
on the CPU, a bf16-capable GPU).

Under bf16 the convolutions and linear layers run in bf16 (oneDNN's AMX/AVX512-BF16 kernels on the
CPU); weights, optimizer state, the loss and every batch-norm statistic stay fp32 (`bnrun.nn`
takes bf16 activations and returns bf16, as torch's kernel does).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from bnrun.training.hardware import cpu_info


def bf16_unsupported(device: str) -> str | None:
    """Why bf16 cannot run at full speed on `device`, or None when it can."""
    if torch.device(device).type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device is visible here"
        return None if torch.cuda.is_bf16_supported() else "this GPU has no bf16 support"
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        return None
    return f"this CPU ({cpu_info()[0]}) has neither AVX512-BF16 nor AMX: bf16 would be emulated, slower than fp32"


def autocast(precision: str, device: str) -> contextlib.AbstractContextManager:
    """The context a trial's forward passes run in: bf16 autocast, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def forward_logits(model: nn.Module, x: torch.Tensor, precision: str, device: str) -> torch.Tensor:
    """The model's output for `x` under the trial's precision, in fp32 (the loss is taken in fp32)."""
    with autocast(precision, device):
        return model(x).float()

