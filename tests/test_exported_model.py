"""`bnrun export model` writes a self-describing model: raw Fashion-MNIST images (uint8) through
`bnrun.run.export.load_model` give the run's stored test accuracy; the file names its classes."""

from __future__ import annotations

import shutil

import pytest
import torch
from torchvision.datasets import FashionMNIST
from typer.testing import CliRunner

from bnrun.cli import app
from bnrun.run.export import load_model
from bnrun.store import Store
from bnrun.training.data import CLASSES, check_available, load, standardized
from conftest import SHIPPED


@pytest.mark.slow  # a pass over the 10,000 test images
def test_raw_uint8_test_images_give_the_stored_accuracy(tmp_path):
    db, target = tmp_path / "s.db", tmp_path / "model.pt"
    shutil.copyfile(SHIPPED, db)
    result = CliRunner().invoke(app, ["export", "model", "12", "--output", str(target), "--db", str(db)])
    assert result.exit_code == 0, result.output
    saved = torch.load(target, weights_only=True)
    assert saved["classes"] == list(CLASSES) and saved["classes"][0] == "T-shirt/top" and saved["run_id"] == 12
    test = FashionMNIST(str(check_available()), train=False)
    model = load_model(target)
    with torch.no_grad():
        predicted = torch.cat([model(test.data[i:i + 1000]).argmax(1) for i in range(0, len(test.data), 1000)])
    accuracy = (predicted == test.targets).float().mean().item()
    stored = Store(str(db), read_only=True).get_run(12).test_acc_population
    assert round(accuracy, 4) == stored == 0.9302


def test_standardized_is_what_training_saw():
    data = load()
    raw = FashionMNIST(str(check_available()), train=False).data[:64]
    assert torch.equal(standardized(raw, data.mean, data.std), data.test.images[:64])
    assert torch.equal(standardized(raw.float() / 255, data.mean, data.std), data.test.images[:64])
