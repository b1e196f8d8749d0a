"""What a sweep would do, without doing it (`bnrun train --dry-run`): its configurations, and for
each how many of its trials the store already holds (completed, diverged, running) and how many
would run. Pure: the store's trial holders come in as records."""

from __future__ import annotations

from dataclasses import dataclass

from bnrun.config import SweepConfig, TrainConfig
from bnrun.store import TrialHolder


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
    seeds = set(sweep.seeds)
    planned = []
    for config in sweep.configs():
        counts = {"completed": 0, "diverged": 0, "running": 0}
        for holder in by_key.get(config.key(), ()):
            rerun = holder.status != "running" and (sweep.force or (sweep.diagnostics and not holder.diagnostics))
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
