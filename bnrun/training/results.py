"""What training measures, as plain records (an epoch, the final metrics, a diagnostic value), and
the progress it reports while it runs. The run layer hands the records to the store, which keeps
them as they are. No torch here: the store and the reports import these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# What ended a run's training (its `stopped_by`): every epoch ran, an epoch's training loss reached
# --target-loss, or the loss became NaN/inf.
STOPPED_BY_EPOCHS, STOPPED_BY_TARGET, STOPPED_BY_DIVERGED = "epochs", "target-loss", "diverged"


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float  # the whole epoch, validation included
    train_seconds: float  # forward/backward/step only


@dataclass(frozen=True)
class FinalMetrics:
    train_loss: float
    train_acc: float
    val_acc: float
    best_val_acc: float
    test_loss_running: float
    test_acc_running: float
    test_loss_population: float
    test_acc_population: float
    train_loss_population: float | None = None  # the (un-augmented) training split in prediction mode
    train_acc_population: float | None = None
    stopped_by: str | None = None  # STOPPED_BY_EPOCHS or STOPPED_BY_TARGET


@dataclass(frozen=True)
class DiagnosticRecord:
    kind: str
    epoch: int  # 0: at initialization
    name: str  # a layer's name, or "model"
    x: float | None  # the step size η where the kind has one
    value: float | None  # None where the value was not finite


class TrainingProgress(Protocol):
    """What the training loop tells a progress display (`bnrun.run.progress` implements it)."""

    def epoch_started(self, epoch: int, epochs: int, batches: int) -> None: ...
    def batch(self) -> None: ...  # a step ended (its loss is read at the epoch's end)
    def epoch_finished(self, record: EpochRecord) -> None: ...
