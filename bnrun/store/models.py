"""The ORM tables (SQLAlchemy 2.0). The schema itself is owned by the Alembic migrations in
`migrations/`; a test asserts the two never drift apart."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedColumn, mapped_column

from bnrun.registry import NEW, OPTIONS, Option


class Base(DeclarativeBase):
    pass


class OfRun:
    """The first columns of a table whose rows belong to a run: their own id, and the run's (indexed
    unless a table says otherwise; the rows go with the run)."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True, sort_order=-2)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True, sort_order=-1)


class Run(Base):
    __tablename__ = "runs"
    # Exactly-once trials: at most one row per (configuration, seed) holds the claim (claim = 1):
    # the running attempt or the outcome. NULLs never collide, so released rows stay as history.
    __table_args__ = (Index("uq_runs_trial_claim", "config_key", "seed", "claim", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    seed: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(16))
    config_key: Mapped[str] = mapped_column(String(32), index=True)
    config_json: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    duration_s: Mapped[float | None] = mapped_column(Float)
    epochs_completed: Mapped[int] = mapped_column(Integer, default=0)
    train_loss: Mapped[float | None] = mapped_column(Float)
    train_acc: Mapped[float | None] = mapped_column(Float)
    val_acc: Mapped[float | None] = mapped_column(Float)
    best_val_acc: Mapped[float | None] = mapped_column(Float)
    test_loss_running: Mapped[float | None] = mapped_column(Float)
    test_acc_running: Mapped[float | None] = mapped_column(Float)
    test_loss_population: Mapped[float | None] = mapped_column(Float)
    test_acc_population: Mapped[float | None] = mapped_column(Float)
    note: Mapped[str | None] = mapped_column(Text)
    bnrun_version: Mapped[str] = mapped_column(String(32))
    torch_version: Mapped[str] = mapped_column(String(32))
    python_version: Mapped[str] = mapped_column(String(32))
    git_commit: Mapped[str | None] = mapped_column(String(40))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    grid_seeds: Mapped[int | None] = mapped_column(Integer)  # seeds the sweep asked for (revision 0002)
    # where it ran (revision 0003): what can change the numerics of the same seed
    cpu_model: Mapped[str | None] = mapped_column(String(255))
    cpu_features: Mapped[str | None] = mapped_column(String(255))
    torch_threads: Mapped[int | None] = mapped_column(Integer)
    gpu_name: Mapped[str | None] = mapped_column(String(255))
    executor: Mapped[str | None] = mapped_column(String(32))
    diagnostics: Mapped[bool | None] = mapped_column(Boolean)
    claim: Mapped[int | None] = mapped_column(Integer)  # 1: this row holds its trial (see __table_args__)
    claim_token: Mapped[str | None] = mapped_column(String(64), index=True)  # an executor task, across its retries
    # revision 0004: the batch-norm path that actually ran (beside the options precision and channels_last)
    bn_path: Mapped[str | None] = mapped_column(String(64))
    # revision 0005: the training split in prediction mode (generalization gap), beside the model options
    train_loss_population: Mapped[float | None] = mapped_column(Float)
    train_acc_population: Mapped[float | None] = mapped_column(Float)
    # revision 0006: run management (a soft delete, and the user's own note; `note` says why a run failed)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime)
    user_note: Mapped[str | None] = mapped_column(Text)
    # revision 0007: on CUDA, the versions and settings that change numerics (NULL for CPU runs)
    cuda_version: Mapped[str | None] = mapped_column(String(32))
    cudnn_version: Mapped[str | None] = mapped_column(String(32))
    gpu_driver: Mapped[str | None] = mapped_column(String(64))
    tf32: Mapped[bool | None] = mapped_column(Boolean)
    cudnn_deterministic: Mapped[bool | None] = mapped_column(Boolean)
    # revision 0008: the instruction set of the fused CPU kernel's build, where bn_path says it ran
    kernel_isa: Mapped[str | None] = mapped_column(String(16))
    # revision 0009: what stopped training (epochs, target-loss, diverged), beside the study's options
    stopped_by: Mapped[str | None] = mapped_column(String(16))


def option_column(option: Option) -> MappedColumn:
    """A training option's column: its type, NULL where it may be unset, and (for an option added after
    the first stores) its legacy value as the server default, which older rows take."""
    kind = {int: Integer(), float: Float(), bool: Boolean()}.get(option.kind, String(option.text_length))
    default = None
    if option.legacy not in (NEW, None):
        default = (true() if option.legacy else false()) if option.kind is bool else (
            f"{option.legacy:g}" if option.kind is float else str(option.legacy))
    return mapped_column(kind, nullable=option.optional, index=option.indexed, server_default=default)


for _option in OPTIONS:  # the options' columns, from the registry (each added by a migration)
    setattr(Run, _option.name, option_column(_option))


class Epoch(OfRun, Base):
    __tablename__ = "epochs"
    __table_args__ = (UniqueConstraint("run_id", "epoch", name="uq_epochs_run_epoch"),)

    epoch: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float] = mapped_column(Float)
    train_acc: Mapped[float] = mapped_column(Float)
    val_loss: Mapped[float] = mapped_column(Float)
    val_acc: Mapped[float] = mapped_column(Float)
    lr: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    train_seconds: Mapped[float] = mapped_column(Float)


class Checkpoint(OfRun, Base):
    __tablename__ = "checkpoints"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), unique=True, sort_order=-1)
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Evaluation(OfRun, Base):
    __tablename__ = "evaluations"

    created_at: Mapped[datetime] = mapped_column(DateTime)
    device: Mapped[str] = mapped_column(String(16))
    val_acc_running: Mapped[float] = mapped_column(Float, doc="validation accuracy, running averages")
    val_acc_population: Mapped[float] = mapped_column(Float, doc="validation accuracy, population statistics")
    test_loss_running: Mapped[float] = mapped_column(Float, doc="test loss, running averages")
    test_acc_running: Mapped[float] = mapped_column(Float, doc="test accuracy, running averages")
    test_loss_population: Mapped[float] = mapped_column(Float, doc="test loss, population statistics")
    test_acc_population: Mapped[float] = mapped_column(Float, doc="test accuracy, population statistics")
    matches_stored: Mapped[bool] = mapped_column(Boolean, doc="both test accuracies equal the trial's own")
    bnrun_version: Mapped[str] = mapped_column(String(32))
    batch_stats_json: Mapped[str | None] = mapped_column(Text)  # {batch size: [test loss, test acc]} (revision 0003)


class Diagnostic(OfRun, Base):
    """One diagnostic value of a run (bnrun.training.diagnostics): `kind` at `epoch` (0 = initialization)
    for `name` (a layer, or "model"), at `x` (a step size) where the kind has one."""

    __tablename__ = "diagnostics"

    kind: Mapped[str] = mapped_column(String(32))
    epoch: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    x: Mapped[float | None] = mapped_column(Float)
    value: Mapped[float | None] = mapped_column(Float)


class Tag(Base):
    """A user's label on a run (revision 0006): `bnrun tag RUN --add TAG`."""

    __tablename__ = "tags"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
