"""A stored trial's trained model as a plain `.pt` file (`bnrun export model`), self-describing: the
state_dict (plain tensors, float32, contiguous), the `build_model` arguments, the input standardization
(the training split's mean and std), the class names, the trial's configuration and run id, all readable
with `torch.load(path, weights_only=True)`. The one load path:

    model = bnrun.run.export.load_model("model.pt")   # eval mode; takes raw images
    labels = model(images).argmax(1)                   # images: uint8 (N, 28, 28) or float in [0, 1]
    names = [torch.load("model.pt", weights_only=True)["classes"][i] for i in labels]
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import bnrun
from bnrun.errors import writing
from bnrun.registry import MODEL_ARGUMENTS
from bnrun.store import RunRecord
from bnrun.training.checkpoint import load_population, rebuild_model
from bnrun.training.data import CLASSES, Standardize, load
from bnrun.training.models import build_model


def model_arguments(run: RunRecord) -> dict:
    """`build_model`'s arguments for the model the run trained (with "fused": False the same
    weights load into the eager layers, no compiled kernel needed)."""
    return {argument: getattr(run, name) for name, argument in MODEL_ARGUMENTS.items()}


def export_model(run: RunRecord, blob: bytes, output: Path, statistics: str = "population",
                 data_dir: Path | None = None) -> dict:
    """Write the model; its BN layers hold the population statistics (what `test_acc_population`
    measured) or the running averages; its input standardization is the training split's (read from
    Fashion-MNIST in `data_dir`). Returns what was written."""
    model, population = rebuild_model(run, blob)
    if statistics == "population":
        load_population(model, population)
    dataset = load(data_dir, run.train_subset)
    saved = {
        "state_dict": {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()},
        "model": model_arguments(run),
        "input": {"mean": dataset.mean, "std": dataset.std, "dtype": "uint8 0-255 or float in [0, 1]",
                  "shape": "(N, 28, 28) or (N, 1, 28, 28)"},
        "classes": list(CLASSES),
        "config": json.loads(run.config_json),
        "statistics": statistics,
        "run_id": run.id,
        "seed": run.seed,
        "test_acc_percent": 100 * (run.test_acc_population if statistics == "population" else run.test_acc_running),
        "bnrun_version": bnrun.__version__,
    }
    with writing(output), output.open("wb") as handle:
        torch.save(saved, handle)
    return saved


def load_model(path: Path | str, fused: bool = False) -> torch.nn.Sequential:
    """The exported model with its input standardization first, in eval mode: it takes raw images (uint8 or
    float in [0, 1]). `fused`: the custom BN's compiled kernel (default: the eager layers, nothing to build)."""
    saved = torch.load(path, weights_only=True)
    model = build_model(**{**saved["model"], "fused": fused and saved["model"]["fused"]})
    model.load_state_dict(saved["state_dict"])
    return torch.nn.Sequential(Standardize(saved["input"]["mean"], saved["input"]["std"]), model).eval()
