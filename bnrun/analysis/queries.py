"""What a report or a figure asks of the store, answered: the report (with its diagnostics
summaries and the runs' epochs), the pivot, the batch-statistics rows. The filter is applied by
the store (`criteria_of`), so only the runs it accepts are read. "Nothing matched" is
`NothingMatched`, never a value."""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import NamedTuple

from bnrun.analysis.diagnostic_summaries import batch_stat_rows, diagnostic_summaries
from bnrun.analysis.grouping import RECIPE, Report, RunFilter, build_report, narrow
from bnrun.analysis.pivots import Pivot, build_pivot
from bnrun.errors import NothingMatched
from bnrun.store import DiagnosticRecord, EpochRecord, RunCriteria, RunRecord, RunStatus, Store

EMPTY_STORE = (
    "no completed trials in the store; run some first, e.g.: bnrun train --arch mlp,cnn --bn pre,post --seeds 3"
)
NOTHING_MATCHED = (
    "no completed trial matches these filters (the store holds {count}); bnrun runs lists them, "
    "bnrun report --all groups them all"
)


def nothing_matched(store: Store) -> NothingMatched:
    """The error for an empty selection: an empty store asks for trials, a full one for other filters."""
    completed = store.count_runs(RunCriteria(equal=(("status", (RunStatus.COMPLETED,)),)))
    if not completed:
        return NothingMatched(EMPTY_STORE)
    return NothingMatched(NOTHING_MATCHED.format(count=f"{completed:,} completed"))


@dataclass(frozen=True)
class ReportRequest:
    """What to report: the headline metric, which trials, how many seeds a group should have, and
    optionally the option whose values become columns (a pivot)."""

    metric: str = "test_acc_population"
    run_filter: RunFilter = RunFilter()
    expected_seeds: int | None = None
    by: str | None = None
    everything: bool = False  # --all: every trial the filter accepts, not one recipe's on one screen

    def narrowed(self) -> bool:
        """Without --all a report shows one recipe's groups on one screen (grouping.narrow)."""
        return not self.everything


def criteria_of(run_filter: RunFilter) -> RunCriteria:
    """The filter as the store's criteria: the same runs as `RunFilter.accepts`, soft-deleted ones left out."""
    named = (("arch", run_filter.archs), ("bn", run_filter.placements))
    equal = tuple((name, values) for name, values in named if values) + run_filter.where
    return RunCriteria(equal, run_filter.impls, run_filter.run_ids, run_filter.since)


def filtered_runs(store: Store, run_filter: RunFilter) -> list[RunRecord]:
    """The runs the filter accepts (soft-deleted ones left out), by id."""
    return store.select_runs(criteria_of(run_filter))


def one_recipes_runs(store: Store, run_filter: RunFilter, sweep: str | None = None) -> tuple[list[RunRecord], str]:
    """`grouping.narrow` done before reading runs: the recipe is chosen from the store's counts of the accepted
    runs per recipe and status (one stand-in per group, repeated by its count, its id the group's lowest, which
    orders the note's recipes as `narrow` orders runs), then only that recipe's runs are read, so a report's time
    and memory follow the recipe it shows, not the store's size. Returns the runs and the note on the recipes
    left out ("" when none were)."""
    named = run_filter.named() | ({sweep} if sweep else set())
    criteria = criteria_of(run_filter)
    columns = tuple(dict.fromkeys(("arch", *RECIPE, *((sweep,) if sweep else ()))))
    stand_ins: list[SimpleNamespace] = []
    for *values, status, first_id, count in store.option_counts(criteria, columns):
        stand_ins += [SimpleNamespace(**dict(zip(columns, values)), status=status, id=first_id)] * count
    chosen, note = narrow(stand_ins, frozenset(named), sweep)
    runs: list[RunRecord] = []
    for arch in sorted({stand_in.arch for stand_in in chosen}):
        held = next(stand_in for stand_in in chosen if stand_in.arch == arch)
        fixed = tuple((name, (getattr(held, name),)) for name in RECIPE if name not in named)
        runs += store.select_runs(replace(criteria, equal=(*criteria.equal, ("arch", (arch,)), *fixed)))
    return sorted(runs, key=lambda run: run.id), note


def selected_runs(store: Store, request: ReportRequest) -> tuple[list[RunRecord], str | None]:
    """The runs a report reads: one recipe's without --all (and the note on the others), else every accepted run
    (and None: nothing narrowed)."""
    if request.narrowed():
        return one_recipes_runs(store, request.run_filter, request.by)
    return filtered_runs(store, request.run_filter), None


class ReportData(NamedTuple):
    """A report with what its figures draw: each run's epochs, and the diagnostics records of the runs that
    recorded them."""

    report: Report
    epochs: dict[int, list[EpochRecord]]
    diagnostics: dict[int, list[DiagnosticRecord]]


def report_of(store: Store, request: ReportRequest) -> ReportData:
    """The report, with diagnostics summaries where its runs have them, its runs' epochs and the
    diagnostics records of the runs that have them (read once, for the summaries and the figures)."""
    runs, left_recipes = selected_runs(store, request)
    result = build_report(runs, request.metric, request.run_filter, request.expected_seeds, request.narrowed(),
                          left_recipes)
    if not result.groups:
        raise nothing_matched(store)
    run_ids = [r.id for g in result.groups for r in g.runs]
    epochs = store.epochs_by_run(run_ids)
    diagnosed = [r.id for g in result.groups for r in g.runs if r.diagnostics]
    diagnostics = store.diagnostics_by_run(diagnosed) if diagnosed else {}
    if diagnostics:
        result = replace(result, diagnostics=diagnostic_summaries(result.groups, diagnostics, epochs))
    return ReportData(result, epochs, diagnostics)


def pivot_of(store: Store, request: ReportRequest) -> Pivot:
    runs, left_recipes = selected_runs(store, request)
    pivot = build_pivot(runs, request.by, request.metric, request.run_filter, request.narrowed(), left_recipes)
    if not pivot.rows:
        raise nothing_matched(store)
    return pivot


def batch_stats_of(store: Store, report: Report) -> list[tuple[str, dict[int, list[float]]]]:
    """Per group of the report: {batch size: [test accuracy per run]} (bnrun eval --batch-stats)."""
    evaluations = {run.id: store.evaluations(run.id) for group in report.groups for run in group.runs}
    return batch_stat_rows(report.groups, evaluations, report.varying)
