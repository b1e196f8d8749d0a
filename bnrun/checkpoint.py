"""A trained model as bytes for the store: float32 weights with the running averages, plus each
BN layer's population statistics and the trial's configuration."""

from __future__ import annotations

import io

import torch
from torch import nn

from bnrun.config import TrainConfig


def serialize_checkpoint(model: nn.Module, running_state: dict, population: dict, config: TrainConfig) -> bytes:
    """float32 weights with running averages, plus each BN layer's population statistics."""
    buffer = io.BytesIO()
    torch.save({
        "state_dict": {k: v.detach().cpu() for k, v in running_state.items()},
        "population": {name: {"mean": m.cpu(), "var": v.cpu()} for name, (m, v) in population.items()},
        "config": config.identity(),
    }, buffer)
    return buffer.getvalue()


def deserialize_checkpoint(blob: bytes) -> dict:
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
