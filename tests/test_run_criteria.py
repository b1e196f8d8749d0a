"""The report's filters applied by the store (`criteria_of`, `Store.select_runs`) select exactly the runs
`RunFilter.accepts` does, on a copy of the shipped store with a few runs soft-deleted; the store's criteria
(None matching a missing value, labels of implementations, empty id sets) and chunked reads of epochs."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from datetime import datetime

import pytest

from bnrun.analysis.grouping import RunFilter, narrow
from bnrun.analysis.listing import RunQuery, select_runs
from bnrun.analysis.queries import filtered_runs, one_recipes_runs
from bnrun.store import RunCriteria, Store
from conftest import SHIPPED

DELETED = [3, 40, 200]

FILTERS = [
    RunFilter(),
    RunFilter(archs=("mlp",)),
    RunFilter(archs=("cnn", "mlp"), placements=("pre",)),
    RunFilter(impls=("custom",)),
    RunFilter(impls=("custom+fused",)),
    RunFilter(impls=("torch", "custom+fused")),
    RunFilter(run_ids=frozenset({1, 2, 3, 7, 50, 51, 52, 390})),
    RunFilter(run_ids=frozenset()),
    RunFilter(since=datetime(2026, 11, 28, 12)),
    RunFilter(where=(("lr", (0.05, 0.3)),)),
    RunFilter(where=(("train_subset", (None, 1000)),)),
    RunFilter(where=(("depth", (None,)), ("epochs", (10,)))),
    RunFilter(where=(("fused", (True,)), ("study", (None,)))),
    RunFilter(where=(("fused", (False,)),), impls=("custom",), placements=("post", "none")),
    RunFilter(where=(("epochs", ()),)),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    copy = tmp_path_factory.mktemp("criteria") / "study.db"
    shutil.copyfile(SHIPPED, copy)
    store = Store(str(copy), reap=False)
    store.delete_runs(DELETED)
    yield store
    store.close()


@pytest.mark.parametrize("run_filter", FILTERS, ids=repr)
def test_store_selects_what_the_filter_accepts(store, run_filter):
    expected = [run for run in store.list_runs() if run_filter.accepts(run)]
    assert filtered_runs(store, run_filter) == expected


def test_select_runs_reads_the_same_records_as_get_runs(store):
    every = store.select_runs(RunCriteria(deleted=None))
    assert len(every) >= 393 and every == store.get_runs([run.id for run in every])


@pytest.mark.parametrize("sort", ["id", "-id", "lr", "-lr", "arch", "-started_at", "train_subset", "-depth"])
def test_pages_in_every_order_are_the_listings_slices(store, sort):
    """Never-missing columns are ordered plainly (an index can serve id), nullable ones missing-last: either
    way the pages, joined, are the listing sorted in Python."""
    expected = [run.id for run in select_runs(store.list_runs(), RunQuery(sort=sort))]
    name, descending = sort.removeprefix("-"), sort.startswith("-")
    pages = [store.page_runs(sort=name, descending=descending, limit=50, offset=start) for start in range(0, len(expected) + 50, 50)]
    assert [run.id for page in pages for run in page.runs] == expected


def test_deleted_and_status_criteria(store):
    assert [run.id for run in store.select_runs(RunCriteria(deleted=True))] == DELETED
    diverged = store.select_runs(RunCriteria(equal=(("status", ("diverged",)),)))
    assert diverged and all(run.status == "diverged" for run in diverged)
    assert store.count_runs(RunCriteria(equal=(("status", ("diverged",)),))) == len(diverged)
    assert store.count_runs() == store.count_runs(RunCriteria(deleted=None))


def test_epochs_by_run_reads_more_runs_than_one_query_holds(store, monkeypatch):
    ids = [run.id for run in store.select_runs(RunCriteria(deleted=None))]
    whole = store.epochs_by_run(ids)
    monkeypatch.setattr("bnrun.store.storage.IN_CHUNK", 7)
    assert store.epochs_by_run(ids) == whole
    assert whole[ids[0]] == store.epochs(ids[0]) and len(ids) > 7


def test_add_ended_runs_round_trip(tmp_path, store):
    """A run written in bulk reads back as the record it was made from (the benchmark's stores)."""
    other = Store(str(tmp_path / "bulk.db"))
    run = store.get_run(12)
    fields = asdict(run)
    fields.pop("id")
    (new_id,) = other.add_ended_runs([(fields, store.epochs(12))])
    assert asdict(other.select_runs(RunCriteria())[0]) == {**asdict(run), "id": new_id}
    other.close()


@pytest.mark.parametrize("sweep", [None, "lr", "depth", "bn", "arch", "ghost_batch", "train_subset"])
@pytest.mark.parametrize("run_filter", FILTERS[:4] + FILTERS[9:13], ids=repr)
def test_the_store_chooses_the_recipe_narrow_chooses_from_every_run(store, run_filter, sweep):
    """A report reads one recipe's runs after choosing it from the store's grouped counts: the same runs and
    the same note as `narrow` over every accepted run."""
    named = run_filter.named() | ({sweep} if sweep else set())
    expected_runs, expected_note = narrow(filtered_runs(store, run_filter), frozenset(named), sweep)
    runs, note = one_recipes_runs(store, run_filter, sweep)
    assert [run.id for run in runs] == sorted(run.id for run in expected_runs) and note == expected_note
