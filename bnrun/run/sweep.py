"""A sweep: plan the grid's trials, skip those already done or running elsewhere, and run the
rest one after another in this process (the local executor). SIGTERM ends it like Ctrl-C. The
data are loaded once per training subset (`bnrun.training.data.load` caches them)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field

from bnrun.config import SweepConfig
from bnrun.run.progress import Reporter
from bnrun.run.trial import ELSEWHERE, SKIPPED, TrialOutcome, TrialSpec, run_trial
from bnrun.store import RunStatus, Store
from bnrun.training.data import load


@dataclass
class SweepResult:
    completed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # the store held an outcome
    elsewhere: list[int] = field(default_factory=list)  # another process is running it
    diverged: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)

    def add(self, outcome: TrialOutcome) -> None:
        lists = {
            RunStatus.COMPLETED: self.completed,
            SKIPPED: self.skipped,
            ELSEWHERE: self.elsewhere,
            RunStatus.DIVERGED: self.diverged,
        }
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


def run_sweep(sweep: SweepConfig, store: Store, reporter: Reporter) -> SweepResult:
    """Every trial of the grid, one after another in this process (the local executor). Trials
    the store holds (completed, diverged, or running elsewhere) are skipped unless forced. A
    diverged trial or a training error does not stop the sweep; a store error does."""
    result = SweepResult()
    specs = plan(sweep)
    with sigterm_as_interrupt():
        reporter.sweep_started(len(specs), sweep.describe(), tuple(sweep.varied()))
        for spec in specs:
            outcome = run_trial(spec, load(sweep.data_dir, spec.config["train_subset"]), store, reporter)
            result.add(outcome)
        reporter.sweep_finished()
    return result


def plan(sweep: SweepConfig) -> list[TrialSpec]:
    """The grid's trials as plain specs, in grid order."""
    return [
        TrialSpec.of(
            config,
            seed,
            grid_seeds=len(sweep.seeds),
            diagnostics=sweep.diagnostics,
            force=sweep.force,
            checkpoint=sweep.checkpoint,
        )
        for config, seed in sweep.trials()
    ]
