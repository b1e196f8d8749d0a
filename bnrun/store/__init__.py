"""The results store: every trial, epoch, checkpoint and evaluation, in SQLite by default."""

from bnrun.store.records import (
    STATUSES,
    DiagnosticRecord,
    EpochRecord,
    EvaluationRecord,
    FinalMetrics,
    PurgeRecord,
    RunLabels,
    RunRecord,
    TrialHolder,
)
from bnrun.store.storage import Store

__all__ = ["Store", "DiagnosticRecord", "RunRecord", "EpochRecord", "EvaluationRecord", "FinalMetrics", "STATUSES",
           "PurgeRecord", "RunLabels", "TrialHolder"]
