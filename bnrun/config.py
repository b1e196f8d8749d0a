"""Frozen configurations, built once from the CLI and passed down unchanged."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ARCHS = ("mlp", "cnn")
PLACEMENTS = ("none", "pre", "post")
BN_IMPLS = ("custom", "torch")
DEFAULT_EPOCHS = {"mlp": 20, "cnn": 10}
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("onecycle", "cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    """One trial's configuration, without its seed. Every field is part of the trial's identity
    except `device` (where it ran does not change what was asked)."""

    arch: str = "cnn"  # mlp | cnn
    bn: str = "pre"  # none | pre (g(BN(f(x)))) | post (BN(g(f(x))))
    bn_impl: str = "custom"  # custom (bnrun.nn) | torch (reference baseline)
    fused: bool = False  # the fused BN fast path (bnrun.nn.fused)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05  # peak learning rate of the schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    schedule: str = "onecycle"
    augment: bool = True  # random horizontal flips
    train_subset: int | None = None  # first N training images (quick runs and tests)
    device: str = "cpu"

    def identity(self) -> dict:
        data = asdict(self)
        data.pop("device")
        return data

    def key(self) -> str:
        """A stable hash of the identity: equal keys (and seeds) mean the same trial."""
        text = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SweepConfig:
    """A grid of trials: every arch × placement × seed over one base configuration."""

    archs: tuple[str, ...]
    placements: tuple[str, ...]
    seeds: tuple[int, ...]
    base: TrainConfig = field(default_factory=TrainConfig)
    epochs: int | None = None  # None: the per-arch default in DEFAULT_EPOCHS
    force: bool = False
    data_dir: Path | None = None

    def trials(self) -> list[tuple[TrainConfig, int]]:
        return [
            (replace(self.base, arch=arch, bn=bn, epochs=self.epochs or DEFAULT_EPOCHS[arch]), seed)
            for arch in self.archs
            for bn in self.placements
            for seed in self.seeds
        ]
