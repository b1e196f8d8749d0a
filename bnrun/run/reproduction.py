"""`bnrun reproduce RUN_ID`: train a stored trial again, from its stored configuration and seed,
into a scratch store (the original is only read), and compare epoch by epoch and at the end.

Same code, same machine, same thread count: the trial should be bit-identical. When it is not,
the first epoch that differs and by how much is reported, with the provenance fields (commit,
versions, CPU features, threads, device) that differ between the two runs.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

from bnrun.config import TrainConfig
from bnrun.errors import StoreError
from bnrun.run.progress import Reporter
from bnrun.run.provenance import differences
from bnrun.run.trial import TrialSpec, run_trial
from bnrun.store import EpochRecord, FinalMetrics, RunRecord, Store
from bnrun.training.data import load

EPOCH_FIELDS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")
# The final numbers; what stopped training is compared through the status and epochs_completed.
FINAL_FIELDS = tuple(f.name for f in fields(FinalMetrics) if f.name != "stopped_by")


@dataclass(frozen=True)
class Difference:
    where: str  # "epoch 3" or "final"
    field: str
    stored: float | None
    reproduced: float | None

    @property
    def amount(self) -> float | None:
        if self.stored is None or self.reproduced is None:
            return None
        return self.reproduced - self.stored


@dataclass(frozen=True)
class Reproduction:
    original: RunRecord
    reproduced: RunRecord
    epoch_differences: tuple[Difference, ...]  # those of the first epoch that differs
    final_differences: tuple[Difference, ...]
    provenance_differences: tuple[str, ...]
    scratch: Path | None  # where the reproduced run was kept (None: deleted)

    @property
    def identical(self) -> bool:
        return (not self.epoch_differences and not self.final_differences
                and self.original.status == self.reproduced.status
                and self.original.epochs_completed == self.reproduced.epochs_completed)


def stored_config(run: RunRecord) -> TrainConfig:
    """The trial's configuration as stored (its identity JSON), on the device it ran on."""
    identity = json.loads(run.config_json)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(identity) - known)
    if unknown:
        raise StoreError(
            f"run {run.id} was trained by a bnrun with options this one lacks ({', '.join(unknown)}); reproduce "
            "it with that version"
        )
    return TrainConfig.from_identity(identity, device=run.device)


def first_epoch_difference(stored: list[EpochRecord], reproduced: list[EpochRecord]) -> tuple[Difference, ...]:
    for a, b in zip(stored, reproduced):
        found = tuple(
            Difference(f"epoch {a.epoch}", name, getattr(a, name), getattr(b, name))
            for name in EPOCH_FIELDS
            if getattr(a, name) != getattr(b, name)
        )
        if found:
            return found
    if len(stored) != len(reproduced):
        epoch = min(len(stored), len(reproduced)) + 1
        return (Difference(f"epoch {epoch}", "epochs completed", len(stored), len(reproduced)),)
    return ()


def final_differences(a: RunRecord, b: RunRecord) -> tuple[Difference, ...]:
    return tuple(
        Difference("final", name, getattr(a, name), getattr(b, name))
        for name in FINAL_FIELDS
        if getattr(a, name) != getattr(b, name)
    )


def reproduce_run(
    original_store: Store, run_id: int, data_dir: Path | None, reporter: Reporter, scratch: Path | None = None
) -> Reproduction:
    """Retrain run `run_id` of `original_store` (read only) into `scratch` (a temporary store if None)."""
    original = original_store.get_run(run_id)
    stored_epochs = original_store.epochs(run_id)
    config = stored_config(original)
    with tempfile.TemporaryDirectory(prefix="bnrun-reproduce-") as temporary:
        path = scratch or Path(temporary) / "scratch.db"
        store = Store(str(path))
        reporter.sweep_started(1, f"run {run_id} again")
        try:
            spec = TrialSpec.of(config, original.seed, grid_seeds=original.grid_seeds, force=True)
            new_id = run_trial(spec, load(data_dir, config.train_subset), store, reporter).run_id
            reproduced, new_epochs = store.get_run(new_id), store.epochs(new_id)
        finally:
            reporter.sweep_finished()
            store.close()
    return Reproduction(
        original,
        reproduced,
        first_epoch_difference(stored_epochs, new_epochs),
        final_differences(original, reproduced),
        tuple(differences(original.__dict__, reproduced.__dict__)),
        scratch,
    )
