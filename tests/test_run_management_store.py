"""The store's run management: tags and notes, soft delete and restore, purge, trial holders."""

from __future__ import annotations

import json

import pytest

from bnrun.errors import StoreError
from bnrun.store import Store
from bnrun.store.records import FinalMetrics
from bnrun.training.results import EpochRecord

FIELDS = dict(
    arch="mlp",
    bn="pre",
    bn_impl="custom",
    fused=False,
    epochs=1,
    batch_size=128,
    lr=0.05,
    momentum=0.9,
    weight_decay=5e-4,
    optimizer="sgd",
    schedule="onecycle",
    augment=True,
    train_subset=600,
    device="cpu",
    bnrun_version="0",
    torch_version="0",
    python_version="0",
    grid_seeds=None,
)
METRICS = FinalMetrics(**{name: 0.5 for name in FinalMetrics.__dataclass_fields__})


def add_trial(store: Store, seed: int, key: str = "k", finish: bool = True) -> int:
    claim = store.claim_run({**FIELDS, "seed": seed}, key, json.dumps({"key": key}))
    if finish:
        store.add_epoch(
            claim.run_id,
            EpochRecord(
                epoch=1,
                train_loss=1.0,
                train_acc=0.5,
                val_loss=1.0,
                val_acc=0.5,
                lr=0.05,
                seconds=1.0,
                train_seconds=1.0,
            ),
        )
        store.complete_run(claim.run_id, METRICS, b"weights")
    return claim.run_id


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    url = str(tmp_path / "s.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    store = Store(url)
    yield store
    store.close()


def test_tags_and_notes(store):
    a, b = add_trial(store, 0), add_trial(store, 1)
    labels = store.label_runs([a, b], add=("baseline", "lr-sweep", "baseline"), note="first try")
    assert [(l.run_id, l.tags, l.user_note) for l in labels] == [
        (a, ("baseline", "lr-sweep"), "first try"),
        (b, ("baseline", "lr-sweep"), "first try"),
    ]
    store.label_runs([a], add=("baseline",), remove=("lr-sweep", "absent"), note="")
    assert store.labels([a, b])[a].tags == ("baseline",) and store.labels([a])[a].user_note is None
    assert [r.id for r in store.list_runs(tags=("lr-sweep",))] == [b]
    assert [r.id for r in store.list_runs(tags=("baseline", "lr-sweep"))] == [b]
    assert store.get_run(a).note is None  # the failure reason stays its own column
    with pytest.raises(StoreError, match="no run with id 99"):
        store.label_runs([a, 99], add=("x",))
    assert store.labels([a])[a].tags == ("baseline",)  # nothing changed


def test_soft_delete_restore_and_the_trials_claim(store):
    a, b = add_trial(store, 0), add_trial(store, 1)
    (deleted,) = store.delete_runs([a])
    assert deleted.deleted_at is not None and deleted.claim is None
    assert [r.id for r in store.list_runs()] == [b]
    assert [r.id for r in store.list_runs(deleted=True)] == [a]
    assert [r.id for r in store.list_runs(deleted=None)] == [a, b]
    assert {(h.seed, h.run_id) for h in store.trial_holders(["k"])} == {(1, b)}  # the deleted trial runs again
    (restored,) = store.restore_runs([a])
    assert restored.deleted_at is None and restored.claim == 1
    assert {(h.seed, h.run_id, h.status) for h in store.trial_holders(["k"])} == {
        (0, a, "completed"),
        (1, b, "completed"),
    }


def test_restore_after_the_trial_ran_again_keeps_the_new_run(store):
    a = add_trial(store, 0)
    store.delete_runs([a])
    again = add_trial(store, 0)
    (restored,) = store.restore_runs([a])
    assert restored.deleted_at is None and restored.claim is None
    assert [h.run_id for h in store.trial_holders(["k"])] == [again]


def test_running_trials_are_never_deleted_or_purged(store):
    done, running = add_trial(store, 0), add_trial(store, 1, finish=False)
    for action in (store.delete_runs, store.purge_runs):
        with pytest.raises(StoreError, match=f"run {running} is running"):
            action([done, running])
    assert [r.id for r in store.list_runs()] == [done, running]


def test_purge_removes_everything(store):
    a, b = add_trial(store, 0), add_trial(store, 1)
    store.label_runs([a], add=("gone",))
    store.add_evaluation(
        a,
        dict(
            device="cpu",
            val_acc_running=0.5,
            val_acc_population=0.5,
            test_loss_running=1.0,
            test_acc_running=0.5,
            test_loss_population=1.0,
            test_acc_population=0.5,
            matches_stored=True,
            bnrun_version="0",
        ),
    )
    purged = store.purge_runs([a])
    assert (purged.run_ids, purged.epochs, purged.checkpoints, purged.evaluations, purged.tags) == ((a,), 1, 1, 1, 1)
    assert [r.id for r in store.list_runs(deleted=None)] == [b]
    assert store.epochs(a) == [] and store.evaluations(a) == [] and store.labels([a])[a].tags == ()
    with pytest.raises(StoreError, match="no checkpoint"):
        store.load_checkpoint(a)
    assert store.count_runs() == 1


def test_reads_of_a_read_only_store_list_management_fields(store, tmp_path):
    a = add_trial(store, 0)
    store.label_runs([a], add=("kept",), note="why")
    reader = Store(store.url, read_only=True)
    try:
        assert reader.get_runs([a])[0].user_note == "why"
        assert reader.labels([a])[a].tags == ("kept",)
        with pytest.raises(StoreError, match="read-only"):
            reader.delete_runs([a])
    finally:
        reader.close()


def test_upgrading_an_old_store_keeps_every_epoch_and_checkpoint(tmp_path):
    """0006 adds columns and a table in place: no epoch or checkpoint is cascaded away."""
    import shutil
    import sqlite3
    from pathlib import Path

    db = tmp_path / "old.db"
    shutil.copyfile(Path(__file__).with_name("fixtures") / "store_0001.db", db)
    counts = "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM epochs), (SELECT count(*) FROM checkpoints)"
    before = sqlite3.connect(db).execute(counts).fetchone()
    Store(str(db)).close()
    connection = sqlite3.connect(db)
    assert connection.execute(counts).fetchone() == before and before[1] > 0
    assert connection.execute("SELECT count(*) FROM runs WHERE deleted_at IS NULL").fetchone() == before[:1]
    connection.close()
