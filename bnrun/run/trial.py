"""One trial from plain values, start to honest end: claim it in the store, train it with a
heartbeat, record how it ended (completed, diverged, failed, interrupted). Every executor (the
local loop, a Ray task) calls `run_trial` or `execute_trial`; nothing here plans a sweep."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from bnrun.config import TrainConfig
from bnrun.errors import StoreError
from bnrun.run.progress import Reporter, SilentReporter
from bnrun.run.provenance import kernel_build, provenance
from bnrun.store import RunStatus, Store
from bnrun.training.data import FashionMNISTData, load
from bnrun.training.loop import Callbacks, Diverged, fit
from bnrun.training.results import STOPPED_BY_DIVERGED

HEARTBEAT_S = 30.0
SKIPPED, ELSEWHERE = "skipped", "running elsewhere"


@dataclass(frozen=True)
class TrialSpec:
    """One trial as plain values, the only thing that crosses process boundaries."""

    config: dict  # TrainConfig's fields, device included
    seed: int
    grid_seeds: int | None = None
    diagnostics: bool = False
    force: bool = False  # run again even if the store holds an outcome
    checkpoint: bool = True  # keep the trained weights (eval, reproduce); a large sweep may go without

    @classmethod
    def of(cls, config: TrainConfig, seed: int, **options) -> TrialSpec:
        return cls(asdict(config), seed, **options)

    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.config)


@dataclass(frozen=True)
class TrialOutcome:
    run_id: int | None  # the new run, or the one that already held the trial
    status: str  # completed | diverged | failed | interrupted | skipped | running elsewhere


def run_fields(config: TrainConfig, seed: int, grid_seeds: int | None = None, diagnostics: bool = False,
               executor: str = "local") -> dict:
    fields = dict(config.__dict__)
    fields.update(seed=seed, grid_seeds=grid_seeds, diagnostics=diagnostics, **provenance(config.device, executor))
    return fields


@contextlib.contextmanager
def heartbeat(store: Store, run_id: int) -> Iterator[None]:
    """Touch the run's heartbeat every HEARTBEAT_S seconds from a background thread."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(StoreError):
                store.heartbeat(run_id)

    thread = threading.Thread(target=beat, name=f"bnrun-heartbeat-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def callbacks_into(store: Store, run_id: int, reporter: Reporter, diagnostics: bool) -> Callbacks:
    """The training loop's callbacks: epochs, diagnostics and the outcome go to the store as they come."""
    def completed(metrics, checkpoint: bytes | None) -> None:
        store.complete_run(run_id, metrics, checkpoint)

    def epoch_ended(record, path: str | None) -> None:
        store.add_epoch(run_id, record, bn_path=path, kernel_isa=kernel_build(path))

    return Callbacks(epoch_ended=epoch_ended,
                     completed=completed, progress=reporter,
                     diagnostics=(lambda records: store.add_diagnostics(run_id, records)) if diagnostics else None)


def run_trial(spec: TrialSpec, dataset: FashionMNISTData, store: Store, reporter: Reporter, executor: str = "local",
              token: str | None = None) -> TrialOutcome:
    """Claim the trial and train it to an honest end. A trial the store already holds (an
    outcome, or running elsewhere) is skipped. KeyboardInterrupt (Ctrl-C or SIGTERM) marks the
    trial interrupted and propagates; a store error marks it failed and propagates."""
    config = spec.train_config()
    fields = run_fields(config, spec.seed, spec.grid_seeds, spec.diagnostics, executor)
    claim = store.claim_run(fields, config.key(), json.dumps(config.identity(), sort_keys=True), token=token,
                            force=spec.force, with_diagnostics=spec.diagnostics)
    if claim.run_id is None:
        reporter.trial_skipped(claim.holder, config, spec.seed)
        return TrialOutcome(claim.holder.id, ELSEWHERE if claim.holder.status == RunStatus.RUNNING else SKIPPED)
    run_id = claim.run_id
    reporter.trial_started(run_id, config, spec.seed)
    try:
        with heartbeat(store, run_id):
            callbacks = callbacks_into(store, run_id, reporter, spec.diagnostics)
            metrics = fit(config, spec.seed, dataset, callbacks, spec.checkpoint)
    except KeyboardInterrupt:
        store.end_run(run_id, RunStatus.INTERRUPTED, INTERRUPTED_NOTE)
        reporter.trial_finished(run_id, RunStatus.INTERRUPTED, None, INTERRUPTED_NOTE)
        raise
    except Diverged as error:
        return _end(store, reporter, run_id, RunStatus.DIVERGED, str(error), STOPPED_BY_DIVERGED)
    except StoreError as error:
        _end(store, reporter, run_id, RunStatus.FAILED, str(error))
        raise
    except Exception as error:  # noqa: BLE001 - any training failure is recorded; the sweep goes on
        return _end(store, reporter, run_id, RunStatus.FAILED, f"{type(error).__name__}: {error}")
    reporter.trial_finished(run_id, RunStatus.COMPLETED, metrics)
    return TrialOutcome(run_id, RunStatus.COMPLETED)


INTERRUPTED_NOTE = "interrupted by the user (SIGINT/SIGTERM)"


def _end(store: Store, reporter: Reporter, run_id: int, status: str, note: str,
         stopped_by: str | None = None) -> TrialOutcome:
    with contextlib.suppress(StoreError):  # the store itself may be what failed (disk full)
        store.end_run(run_id, status, note[:2000], stopped_by)
    reporter.trial_finished(run_id, status, None, note)
    return TrialOutcome(run_id, status)


def execute_trial(store_url: str, spec: TrialSpec, data_dir: str | None, token: str | None = None,
                  executor: str = "local", threads: int | None = None) -> TrialOutcome:
    """A trial from plain values, in whatever process an executor chose: open the store from its
    URL, find the data locally, claim, train, record, close. Never given a live engine or session."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    dataset = load(Path(data_dir) if data_dir else None, spec.config.get("train_subset"))
    store = Store(store_url, reap=False)
    try:
        return run_trial(spec, dataset, store, SilentReporter(), executor, token)
    finally:
        store.close()
