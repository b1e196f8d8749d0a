"""A trained model as bytes for the store: float32 weights with the running averages, plus each
BN layer's population statistics and the trial's configuration; and the model rebuilt from them."""

from __future__ import annotations

import io

import torch
from torch import nn

from bnrun.config import TrainConfig
from bnrun.errors import StoreError
from bnrun.training.models import model_of


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


def rebuild_model(run, blob: bytes) -> tuple[nn.Module, dict]:
    """The model a stored trial (any record with TrainConfig's model fields and an `id`) trained,
    with its running averages loaded, and its population statistics."""
    try:
        checkpoint = deserialize_checkpoint(blob)
        model = model_of(run)
        model.load_state_dict(checkpoint["state_dict"])
    except Exception as error:  # noqa: BLE001 - an unreadable checkpoint is a store problem
        raise StoreError(
            f"the checkpoint of run {run.id} cannot be loaded ({type(error).__name__}); retrain it with --force"
        ) from None
    return model, checkpoint["population"]


def load_population(model: nn.Module, population: dict) -> None:
    """Put the population statistics into the BN layers' running buffers."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, stats in population.items():
            modules[name].running_mean.copy_(stats["mean"])
            modules[name].running_var.copy_(stats["var"])
