"""Frozen configurations, built once from the CLI and passed down unchanged."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import asdict, dataclass, field, fields, make_dataclass, replace
from pathlib import Path

from bnrun.registry import (  # noqa: F401 - the option registry's names, re-exported for the rest of bnrun
    ARCHS,
    BN_IMPLS,
    FASHION_MNIST_TRAIN,
    INITS,
    LEGACY_VALUES,
    OPTIMIZERS,
    OPTIONS,
    PLACEMENTS,
    PRECISIONS,
    SCHEDULES,
    TRAINING_SPLIT,
    VALIDATION_SIZE,
)

DEFAULT_EPOCHS = {"mlp": 20, "cnn": 10}
DEVICES = ("auto", "cpu", "cuda")
AUTO_PRECISION = "auto"  # resolved per trial by resolve_precision; what runs (fp32 or bf16) is stored
# The largest integer the store holds (SQLite INTEGER, PostgreSQL BIGINT): a run id is 1 to this, and an
# integer option or filter value beyond it is refused before it reaches SQL.
STORED_INT_MAX = 2**63 - 1


def valid_run_id(run_id: int) -> bool:
    """A run id is a positive integer that fits the store's id column; any other is no run."""
    return 1 <= run_id <= STORED_INT_MAX


class ConfigMethods:
    """What every trial's configuration answers: its identity, and its key."""

    def identity(self) -> dict:
        data = asdict(self)
        data.pop("device")
        for name, value in LEGACY_VALUES.items():  # keeps the keys of trials stored before the field existed
            if data[name] == value:
                data.pop(name)
        return data

    @classmethod
    def from_identity(cls, identity: dict, **extra) -> TrainConfig:
        """The configuration a stored identity describes (fields it lacks take their legacy value)."""
        return cls(**{**LEGACY_VALUES, **identity, **extra})

    def key(self) -> str:
        """A stable hash of the identity: equal keys (and seeds) mean the same trial."""
        text = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# One trial's configuration, without its seed: a field per option of the registry (bnrun.registry), at its
# default, then `device`. Every field is part of the trial's identity except `device` (where it ran does not
# change what was asked). The defaults are the reference path's (fp32, NCHW, eager BN); the CLI turns
# FAST_PATH on where it applies.
TrainConfig = make_dataclass(
    "TrainConfig",
    [(option.name, option.kind | None if option.optional else option.kind, field(default=option.default))
     for option in OPTIONS] + [("device", str, field(default="cpu"))],
    bases=(ConfigMethods,),
    frozen=True,
)
TrainConfig.__module__ = __name__  # pickled by reference (Ray ships configurations to its workers)


# What the CLI trains by default on top of TrainConfig's defaults: the custom BN's fused kernel, the
# CNN in channels_last (SweepConfig.configs drops each where it does not apply), and the precision
# that is fastest on the machine at hand.
FAST_PATH = {"fused": True, "channels_last": True, "precision": AUTO_PRECISION}

# Where bf16 pays given bf16 units (AVX512-BF16 or AMX, a bf16 GPU), measured per architecture
# (README, Benchmarks: the CNN's step and whole trial are faster in bf16; the MLP's step, small
# matrix products, is slower in bf16 than in fp32).
BF16_PAYS = {"cnn": True, "mlp": False}


def resolve_precision(precision: str, arch: str, bf16_units: bool) -> str:
    """`auto` made concrete: bf16 where the device has bf16 units and it pays for `arch`, else fp32."""
    if precision != AUTO_PRECISION:
        return precision
    return "bf16" if bf16_units and BF16_PAYS[arch] else "fp32"


# Under the onecycle schedule SGD's momentum cycles inversely to the learning rate, between
# momentum − MOMENTUM_SPREAD and momentum + MOMENTUM_SPREAD: the default 0.9 gives 0.85–0.95, torch
# OneCycleLR's own cycle, which every trial before the option took effect ran. 0: no momentum.
MOMENTUM_SPREAD = 0.05


def momentum_cycle(momentum: float) -> tuple[float, float]:
    """(lowest, highest) momentum of the onecycle schedule; rounded so 0.9 gives exactly 0.85, 0.95."""
    return round(momentum - MOMENTUM_SPREAD, 12), round(momentum + MOMENTUM_SPREAD, 12)


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """'1 run', '3 runs', '0 runs': a count with its noun in the right number."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def impl_label(bn_impl: str, fused: bool) -> str:
    """The batch-norm implementation as reports name it: custom, custom+fused, torch."""
    return bn_impl + ("+fused" if fused else "")


def impl_text(bn: str | None, bn_impl: str, fused: bool) -> str:
    """The implementation as every view shows it: `impl_label`'s, or — for bn=none (no BN, so no implementation,
    though the run stores bn_impl's default)."""
    return "—" if bn == "none" else impl_label(bn_impl, fused)


def bn_text(bn: str | None, bn_impl: str, fused: bool) -> str:
    """'bn=pre (custom+fused)', or 'bn=none' alone: the placement and its implementation, as every label of a
    run, a trial or a group names them."""
    return f"bn={bn}" if bn == "none" else f"bn={bn} ({impl_label(bn_impl, fused)})"


def option_text(value: object) -> str:
    """An option's value as the command line spells it, in every human view (the terminal and the web):
    — for none, yes and no for booleans, floats in their shortest form."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# A study tag: a letter or digit, then letters, digits, '.', '_' or '-' (no comma, no space), at most
# STUDY_LENGTH characters; "none" is --where's word for an untagged trial.
STUDY_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
STUDY_LENGTH = 64

# The CNN's assignment model is depth 2 at base width 32: spelled out, it is the same trial.
CNN_ASSIGNMENT = {"depth": 2, "width": 32}


def canonical_model(config: TrainConfig) -> TrainConfig:
    """`config` with model options equal to the assignment's CNN written as None (its legacy key)."""
    if config.arch != "cnn":
        return config
    return replace(config, **{name: None for name, value in CNN_ASSIGNMENT.items() if getattr(config, name) == value})


TRAIN_FIELDS = tuple(f.name for f in fields(TrainConfig))


def options_without_effect(config) -> dict[str, object]:
    """The options that cannot apply to a configuration (a TrainConfig, or a stored run with its fields), each
    with the value it is written with there."""
    inert: dict[str, object] = {}
    if config.bn_impl == "torch" or config.bn == "none":  # the fused path is the custom BN's
        inert["fused"] = False
    if config.arch != "cnn":  # a memory order of convolution activations; the MLP has none
        inert["channels_last"] = False
    if config.optimizer == "adam":  # AdamW has no momentum option (its beta1 cycle is fixed)
        inert["momentum"] = TrainConfig.momentum
    if config.bn == "none":  # no statistics to take in chunks
        inert["ghost_batch"] = None
    return inert


def normalized(config: TrainConfig) -> TrainConfig:
    """`config` with each option that cannot apply to it at its default (epochs None: the arch's)."""
    if config.epochs is None:
        config = replace(config, epochs=DEFAULT_EPOCHS[config.arch])
    config = replace(config, **options_without_effect(config))
    if config.ghost_batch == config.batch_size:  # one chunk: plain BN
        config = replace(config, ghost_batch=None)
    return canonical_model(config)


@dataclass(frozen=True)
class SweepConfig:
    """A grid of trials: the product of `axes` (field → values, None in `epochs` meaning the
    per-arch default) over one base configuration, times the seeds."""

    axes: tuple[tuple[str, tuple], ...]
    seeds: tuple[int, ...]
    base: TrainConfig = field(default_factory=TrainConfig)
    force: bool = False
    data_dir: Path | None = None
    diagnostics: bool = False  # record the batch-norm diagnostics (bnrun.training.diagnostics) with each trial
    checkpoint: bool = True  # keep each completed trial's weights in the store
    bf16_units: bool = False  # the device has bf16 units (resolves precision auto)
    # (key at the hardware's precision, seed, precision): auto trials the store already holds, and in
    # which precision (set by bnrun.run.plan.settle_auto_precision)
    held_precisions: tuple[tuple[str, int, str], ...] = ()

    def __post_init__(self) -> None:
        unknown = [name for name, _ in self.axes if name not in TRAIN_FIELDS]
        if unknown:
            raise ValueError(f"not a training option: {', '.join(unknown)}")

    def grid(self) -> list[tuple[TrainConfig, bool]]:
        """The grid's distinct configurations, precision auto at the hardware's choice, each with
        whether auto chose its precision (auto and an explicit precision may ask for the same one)."""
        names = [name for name, _ in self.axes]
        grid = []
        for combo in itertools.product(*(values for _, values in self.axes)):
            config = replace(self.base, **dict(zip(names, combo)))
            auto = config.precision == AUTO_PRECISION
            precision = resolve_precision(config.precision, config.arch, self.bf16_units)
            grid.append((normalized(replace(config, precision=precision)), auto))
        return list(dict.fromkeys(grid))

    def configs(self) -> list[TrainConfig]:
        return list(dict.fromkeys(config for config, _ in self.trials()))  # a repeated value adds no trial

    def trials(self) -> list[tuple[TrainConfig, int]]:
        """(configuration, seed), seed-major: every configuration of the first seed, then of the next,
        so that a grid stopped part-way leaves whole seeds, paired across configurations. An auto
        trial the store holds (held_precisions) takes the precision it is held in."""
        held = {(key, seed): precision for key, seed, precision in self.held_precisions}
        grid = self.grid()
        trials = []
        for seed in self.seeds:
            for config, auto in grid:
                precision = held.get((config.key(), seed)) if auto and held else None
                trials.append((replace(config, precision=precision) if precision else config, seed))
        return list(dict.fromkeys(trials))

    def varied(self) -> dict[str, tuple]:
        """The axes with more than one value (what the grid actually varies)."""
        return {name: values for name, values in self.axes if len(values) > 1}

    def describe(self) -> str:
        """'2 arch × 3 lr × 3 seeds = 18 trials'."""
        parts = [f"{len(values)} {name}" for name, values in self.varied().items()]
        parts.append(f"{len(self.seeds)} seed" + ("s" if len(self.seeds) != 1 else ""))
        total = len(self.trials())
        product = math.prod(len(values) for values in self.varied().values()) * len(self.seeds)
        suffix = "" if total == product else f" ({product - total} repeated)"
        return " × ".join(parts) + f" = {counted(total, 'trial')}" + suffix
