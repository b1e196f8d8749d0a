"""A sweep: plan the grid's trials, skip those already done or running elsewhere, and run the
rest one after another in this process (the local executor). SIGTERM ends it like Ctrl-C."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bnrun import data as data_mod
from bnrun.config import SweepConfig
from bnrun.progress import Reporter
from bnrun.store import Store
from bnrun.trial import ELSEWHERE, SKIPPED, TrialOutcome, TrialSpec, run_trial


@dataclass
class SweepResult:
    completed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # the store held an outcome
    elsewhere: list[int] = field(default_factory=list)  # another process is running it
    diverged: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)

    def add(self, outcome: TrialOutcome) -> None:
        lists = {"completed": self.completed, SKIPPED: self.skipped, ELSEWHERE: self.elsewhere, "diverged": self.diverged}
        lists.get(outcome.status, self.failed).append(outcome.run_id)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM end a trial the way Ctrl-C does."""
    def handler(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class DatasetCache:
    """The data loaded once per training subset a grid asks for (the last one kept)."""

    def __init__(self, data_dir: Path | None) -> None:
        self.data_dir, self.subset, self.dataset = data_dir, None, None

    def get(self, subset: int | None) -> data_mod.FashionMNISTData:
        if self.dataset is None or subset != self.subset:
            self.subset, self.dataset = subset, data_mod.load(self.data_dir, subset)
        return self.dataset


def run_sweep(sweep: SweepConfig, store: Store, reporter: Reporter) -> SweepResult:
    """Every trial of the grid, one after another in this process (the local executor). Trials
    the store holds (completed, diverged, or running elsewhere) are skipped unless forced. A
    diverged trial or a training error does not stop the sweep; a store error does."""
    result = SweepResult()
    specs = plan(sweep)
    datasets = DatasetCache(sweep.data_dir)
    with sigterm_as_interrupt():
        reporter.sweep_started(len(specs), sweep.describe())
        for spec in specs:
            outcome = run_trial(spec, datasets.get(spec.config["train_subset"]), store, reporter)
            result.add(outcome)
        reporter.sweep_finished()
    return result


def plan(sweep: SweepConfig) -> list[TrialSpec]:
    """The grid's trials as plain specs, in grid order."""
    return [TrialSpec.of(config, seed, grid_seeds=len(sweep.seeds), diagnostics=sweep.diagnostics, force=sweep.force,
                         checkpoint=sweep.checkpoint)
            for config, seed in sweep.trials()]
