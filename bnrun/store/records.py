"""Plain records the store returns; the rest of bnrun never sees an ORM row or a session. What
training measures (epochs, final metrics, diagnostics) is defined by `bnrun.training.results`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, make_dataclass
from datetime import datetime
from enum import StrEnum

from bnrun.registry import OPTIONS
from bnrun.training.results import DiagnosticRecord, EpochRecord, FinalMetrics

__all__ = [
    "OUTCOMES",
    "STATUSES",
    "CheckpointInfo",
    "DiagnosticRecord",
    "EpochRecord",
    "EvaluationRecord",
    "FinalMetrics",
    "PurgeRecord",
    "RunCriteria",
    "RunPage",
    "RunLabels",
    "RunRecord",
    "RunStatus",
    "TrialHolder",
]

class RunStatus(StrEnum):
    """A run row's status; the store holds its value (a plain string)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    DIVERGED = "diverged"


STATUSES = tuple(RunStatus)
# The results a re-run skips; failed, interrupted and reaped trials run again.
OUTCOMES = (RunStatus.COMPLETED, RunStatus.DIVERGED)


@dataclass(frozen=True)
class RunFields:
    """A run's own fields, as the store holds them (RunRecord adds the training options')."""

    id: int
    status: str
    seed: int
    device: str
    config_key: str
    config_json: str
    started_at: datetime
    ended_at: datetime | None
    heartbeat_at: datetime | None
    duration_s: float | None
    epochs_completed: int
    train_loss: float | None
    train_acc: float | None
    val_acc: float | None
    best_val_acc: float | None
    test_loss_running: float | None
    test_acc_running: float | None
    test_loss_population: float | None
    test_acc_population: float | None
    note: str | None
    bnrun_version: str
    torch_version: str
    python_version: str
    git_commit: str | None
    host: str
    pid: int
    grid_seeds: int | None
    cpu_model: str | None = None
    cpu_features: str | None = None
    torch_threads: int | None = None
    gpu_name: str | None = None
    executor: str | None = None
    diagnostics: bool | None = None
    claim: int | None = None
    claim_token: str | None = None
    bn_path: str | None = None  # e.g. fused-cpu, compiled, eager, torch, none; "+"-joined when layers differed
    train_loss_population: float | None = None  # the training split in prediction mode, after training
    train_acc_population: float | None = None
    deleted_at: datetime | None = None  # soft-deleted (bnrun delete): left out of runs, report and plot
    user_note: str | None = None  # the user's own note (bnrun tag --note); `note` says why a run failed
    cuda_version: str | None = None  # on CUDA (revision 0007): the runtime torch was built with
    cudnn_version: str | None = None
    gpu_driver: str | None = None
    tf32: bool | None = None  # fp32 convolutions and matmuls allowed to round to TF32
    cudnn_deterministic: bool | None = None
    kernel_isa: str | None = None  # with fused-cpu (0008): its build, e.g. avx512-bf16 (v1), avx512-bf16/v2
    stopped_by: str | None = None  # what ended training: epochs | target-loss | diverged (NULL before 0009)


# A run as the store holds it: its own fields, then a field per option of the registry (bnrun.registry).
RunRecord = make_dataclass(
    "RunRecord",
    [(option.name, option.kind | None if option.optional else option.kind, field(default=option.default))
     for option in OPTIONS],
    bases=(RunFields,),
    frozen=True,
)
RunRecord.__module__ = __name__


@dataclass(frozen=True)
class EvaluationRecord:
    id: int
    run_id: int
    created_at: datetime
    device: str
    val_acc_running: float
    val_acc_population: float
    test_loss_running: float
    test_acc_running: float
    test_loss_population: float
    test_acc_population: float
    matches_stored: bool
    bnrun_version: str
    batch_stats_json: str | None = None

    def batch_stats(self) -> dict[int, tuple[float, float]]:
        """{batch size: (test loss, test accuracy)} with batch statistics (empty when not asked for)."""
        raw = json.loads(self.batch_stats_json or "{}")
        return {int(size): (loss, acc) for size, (loss, acc) in raw.items()}


def record_from_row(record_type: type, row: object):
    """Copy the same-named attributes of an ORM row into a record dataclass."""
    return record_type(**{f.name: getattr(row, f.name) for f in fields(record_type)})


@dataclass(frozen=True)
class RunLabels:
    """What the user attached to a run: its tags (sorted) and its note."""

    run_id: int
    tags: tuple[str, ...]
    user_note: str | None


@dataclass(frozen=True)
class PurgeRecord:
    """What `Store.purge_runs` removed: the runs, and the rows that hung off them."""

    run_ids: tuple[int, ...]
    epochs: int
    checkpoints: int
    evaluations: int
    diagnostics: int
    tags: int


@dataclass(frozen=True)
class TrialHolder:
    """The row that holds a trial (configuration key, seed): its outcome, or the running attempt."""

    config_key: str
    seed: int
    run_id: int
    status: str
    diagnostics: bool | None = None  # a sweep with --diagnostics runs the trial again without them


@dataclass(frozen=True)
class RunCriteria:
    """Which runs a query selects (`Store.select_runs`, `Store.count_runs`, `Store.page_runs`), as plain values;
    every condition given must hold. `equal`: (column, values) pairs, each kept when the column holds one of its
    values (None matches a missing value); `impls`: implementation names or labels (custom, custom+fused, torch);
    `run_ids`: only these ids; `since`: started at or after; `tags`: carrying every one; `deleted`: False leaves
    soft-deleted runs out, True keeps only them, None both."""

    equal: tuple[tuple[str, tuple], ...] = ()
    impls: tuple[str, ...] = ()
    run_ids: frozenset[int] | None = None
    since: datetime | None = None
    tags: tuple[str, ...] = ()
    deleted: bool | None = False


@dataclass(frozen=True)
class RunPage:
    """One page of a listing (`Store.page_runs`): its runs, and how many runs the filters match."""

    runs: tuple[RunRecord, ...]
    total: int


@dataclass(frozen=True)
class CheckpointInfo:
    """What is known of a stored checkpoint without reading its bytes."""

    run_id: int
    sha256: str
    size_bytes: int
    created_at: datetime
