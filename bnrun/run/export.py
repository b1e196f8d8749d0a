"""A stored trial's trained model as a plain `.pt` file (`bnrun export model`): the state_dict
(plain tensors, float32, contiguous), the `build_model` arguments and the trial's configuration,
all readable with `torch.load(path, weights_only=True)`:

    saved = torch.load("model.pt", weights_only=True)
    model = bnrun.training.models.build_model(**saved["model"])
    model.load_state_dict(saved["state_dict"])
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import bnrun
from bnrun.store import RunRecord
from bnrun.training.checkpoint import load_population, rebuild_model

MODEL_ARGS = ("arch", "bn", "depth", "width", "dropout")


def model_arguments(run: RunRecord) -> dict:
    """`build_model`'s arguments for the model the run trained (with "fused": False the same
    weights load into the eager layers, no compiled kernel needed)."""
    return {
        "arch": run.arch,
        "bn": run.bn,
        "impl": run.bn_impl,
        "fused": run.fused,
        "channels_last": run.channels_last,
        "depth": run.depth,
        "width": run.width,
        "dropout": run.dropout,
    }


def export_model(run: RunRecord, blob: bytes, output: Path, statistics: str = "population") -> dict:
    """Write the model; its BN layers hold the population statistics (what `test_acc_population`
    measured) or the running averages. Returns what was written."""
    model, population = rebuild_model(run, blob)
    if statistics == "population":
        load_population(model, population)
    saved = {
        "state_dict": {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()},
        "model": model_arguments(run),
        "config": json.loads(run.config_json),
        "statistics": statistics,
        "run_id": run.id,
        "seed": run.seed,
        "test_acc": run.test_acc_population if statistics == "population" else run.test_acc_running,
        "bnrun_version": bnrun.__version__,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, output)
    return saved
