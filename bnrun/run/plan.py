"""What a sweep would do, without doing it (`bnrun train --dry-run`): its configurations, and for
each how many of its trials the store already holds (completed, diverged, running) and how many
would run; and precision auto settled per trial against what the store holds. Pure but for
`settle_auto_precision`, which reads the store's trial holders."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from bnrun.config import BF16_PAYS, PRECISIONS, SweepConfig, TrainConfig
from bnrun.store import OUTCOMES, RunStatus, Store, TrialHolder


@dataclass(frozen=True)
class PlannedConfig:
    config: TrainConfig
    seeds: int
    completed: int = 0
    diverged: int = 0
    running: int = 0

    @property
    def to_run(self) -> int:
        return self.seeds - self.completed - self.diverged - self.running


@dataclass(frozen=True)
class SweepPlan:
    description: str  # '2 arch × 3 seeds = 6 trials'
    configs: tuple[PlannedConfig, ...]
    varied: tuple[str, ...]  # the options that differ between the configurations
    store_exists: bool

    def total(self, name: str) -> int:
        return sum(getattr(planned, name) for planned in self.configs)


def plan_sweep(sweep: SweepConfig, holders: list[TrialHolder], store_exists: bool = True) -> SweepPlan:
    """Count, per configuration, the trials a run of this sweep would skip (the store holds their
    outcome, or another process runs them) and those it would run; as `run_sweep` decides:
    --force reruns outcomes, --diagnostics reruns outcomes recorded without them."""
    by_key: dict[str, list[TrialHolder]] = {}
    for holder in holders:
        by_key.setdefault(holder.config_key, []).append(holder)
    seeds_of: dict[TrainConfig, set[int]] = {}
    for config, seed in sweep.trials():  # one configuration's seeds may differ in precision (auto)
        seeds_of.setdefault(config, set()).add(seed)
    planned = []
    for config, seeds in seeds_of.items():
        counts = {RunStatus.COMPLETED: 0, RunStatus.DIVERGED: 0, RunStatus.RUNNING: 0}
        for holder in by_key.get(config.key(), ()):
            outcome_rerun = sweep.force or (sweep.diagnostics and not holder.diagnostics)
            rerun = holder.status != RunStatus.RUNNING and outcome_rerun
            if holder.seed in seeds and not rerun and holder.status in counts:
                counts[holder.status] += 1
        planned.append(PlannedConfig(config, len(seeds), **counts))
    configs = [p.config for p in planned]
    varied = tuple(
        name
        for name in TrainConfig.__dataclass_fields__
        if name != "device" and len({getattr(c, name) for c in configs}) > 1
    )
    return SweepPlan(sweep.describe(), tuple(planned), varied, store_exists)


def settle_auto_precision(sweep: SweepConfig, store: Store) -> SweepConfig:
    """`sweep` with precision auto resolved, per trial, to the precision the store already holds
    the trial in (same identity but for precision, same seed, completed or diverged), where it
    holds one the device can run; elsewhere auto stays the hardware's choice."""
    candidates = {
        replace(config, precision=precision).key(): (config.key(), precision)
        for config, auto in sweep.grid()
        if auto
        for precision in PRECISIONS
        if precision == "fp32" or sweep.bf16_units
    }
    if not candidates:
        return sweep
    return replace(sweep, held_precisions=held_precisions(sweep, candidates, store.trial_holders(list(candidates))))


def held_precisions(
    sweep: SweepConfig, candidates: dict[str, tuple[str, str]], holders: list[TrialHolder]
) -> tuple[tuple[str, int, str], ...]:
    """(key at the hardware's precision, seed, precision held) for each auto trial the holders hold
    an outcome of; held in both precisions, the hardware's choice."""
    held: dict[tuple[str, int], set[str]] = {}
    for holder in holders:
        if holder.seed in sweep.seeds and holder.status in OUTCOMES:
            key, precision = candidates[holder.config_key]
            held.setdefault((key, holder.seed), set()).add(precision)
    hardware = {config.key(): config.precision for config, _ in sweep.grid()}
    return tuple(
        (key, seed, hardware[key] if hardware[key] in precisions else min(precisions))
        for (key, seed), precisions in held.items()
    )


def auto_precision_line(sweep: SweepConfig) -> str | None:
    """What precision auto chose, and why, for each architecture where bf16 pays: one line; None
    where auto had no choice to make (not asked for, or no bf16 units)."""
    if not sweep.bf16_units:
        return None
    held = {(key, seed): precision for key, seed, precision in sweep.held_precisions}
    chosen: Counter[tuple[str, str, bool]] = Counter()
    for config, auto in sweep.grid():
        for seed in sweep.seeds if auto and BF16_PAYS[config.arch] else ():
            precision = held.get((config.key(), seed))
            chosen[(config.arch, precision or config.precision, precision is not None)] += 1
    device = "GPU" if sweep.base.device == "cuda" else "CPU"
    parts = []
    for (arch, precision, stored), count in chosen.items():
        some = f"{count} of its trials, " if sum(key[0] == arch for key in chosen) > 1 else ""
        why = f"the store already holds these trials in {precision}" if stored else f"this {device} has bf16 units"
        parts.append(f"{precision} for {arch} ({some}{why})")
    reference = "; --precision fp32 for the reference" if any(key[1] == "bf16" for key in chosen) else ""
    return "precision auto: " + ", ".join(parts) + reference if parts else None
