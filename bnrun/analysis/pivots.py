"""Pivots (`bnrun report --by OPTION`): one option's values as columns, the configurations without
it as rows; each cell the completed trials' mean ± std and how many diverged."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from bnrun.analysis.grouping import (
    BN_ORDER,
    HYPERPARAMETERS,
    IDENTITY,
    PIVOT_FIELDS,
    PIVOT_FIELDS_LISTED,
    RECIPE,
    SCREEN_ROWS,
    Comparison,
    RunFilter,
    build_report,
    count_once,
    default_recipe,
    narrow,
    off_default,
    value_order,
)
from bnrun.analysis.metrics import HIGHER_IS_BETTER, at_chance, digits, mean_std_text, metric_value, scaled_pair
from bnrun.analysis.stats import Summary, summarize
from bnrun.config import options_without_effect
from bnrun.errors import UsageError, unknown_choice
from bnrun.store import OUTCOMES, RunRecord, RunStatus


@dataclass(frozen=True)
class Cell:
    summary: Summary  # of the completed trials
    diverged: int
    ended: int  # completed + diverged: the trials that ran to an outcome
    run_ids: tuple[int, ...]
    values: tuple[float, ...] = ()  # the completed trials' metric values (a figure draws them where n is small)

    def value_text(self, metric: str, pm: str = "±") -> str:
        mean, std = scaled_pair(self.summary.mean, self.summary.std, metric)
        return "" if mean is None else mean_std_text(mean, std, digits(metric), pm)

    def flag_text(self) -> str:
        return f"diverged {self.diverged}/{self.ended}" if self.diverged else ""

    def marks(self, chance: bool) -> list[tuple[str, str]]:
        """(kind, count) of what a figure marks at this cell besides its line: ("diverged", "k/n") where trials
        diverged; with `chance` (an accuracy), ("chance", "n/ended") where the completed trials ended at chance."""
        marks = [("diverged", f"{self.diverged}/{self.ended}")] if self.diverged else []
        if chance and self.summary.mean is not None and at_chance(self.summary.mean):
            marks.append(("chance", f"{self.summary.n}/{self.ended}"))
        return marks

    def text(self, metric: str) -> str:
        """'89.41 ± 0.06', 'diverged 3/3', or '10.00 ± 0.00 · at chance' (what a figure marks, said in words)."""
        chance = "at chance" if any(kind == "chance" for kind, _ in self.marks(metric in HIGHER_IS_BETTER)) else ""
        return " · ".join(p for p in (self.value_text(metric), self.flag_text(), chance) if p) or "—"


@dataclass(frozen=True)
class PivotRow:
    labels: dict  # the row's identity: arch, bn, bn_impl, fused and any other varying option
    cells: dict  # column value -> Cell
    best: object | None  # the column value with the best mean in this row


@dataclass(frozen=True)
class Pivot:
    by: str
    metric: str
    columns: tuple  # the option's values, ascending
    row_fields: tuple[str, ...]
    rows: tuple[PivotRow, ...]
    comparisons: tuple[Comparison, ...]  # within each column (same option value), Holm-corrected
    left_out: tuple[str, ...] = ()  # what a narrowed selection left out, and how to see it
    held: dict = field(default_factory=dict)  # {option: value}: off the training default in every row


INERT, ARCH_DEFAULT = object(), object()  # an option's setting where it has no effect, or is its arch's default


def pivot_row_fields(runs: list[RunRecord], by: str) -> tuple[str, ...]:
    """arch, bn and bn_impl, then whatever else varies among the runs (fused, other options), except an option
    that varies only where it has no effect (`options_without_effect`: the kernel of bn=none or torch's BN,
    the memory layout of the MLP) or only between each arch's defaults (epochs): splitting rows by it would put
    trials of one recipe in rows of their own."""
    def varies(name: str) -> bool:
        return len({getattr(r, name) for r in runs}) > 1

    def setting(run: RunRecord, name: str) -> object:
        if name in options_without_effect(run):
            return INERT
        value = getattr(run, name)
        return ARCH_DEFAULT if name in RECIPE and value == default_recipe(run.arch)[name] else value

    def varies_where_it_acts(name: str) -> bool:
        return len({setting(r, name) for r in runs} - {INERT}) > 1

    shown = tuple(name for name in ("arch", "bn", "bn_impl") if name != by)
    extra = ("fused",) + HYPERPARAMETERS
    return shown + tuple(name for name in extra if name != by and varies(name) and varies_where_it_acts(name))


def build_pivot(
    runs: list[RunRecord], by: str, metric: str = "test_acc_population", run_filter: RunFilter = RunFilter(),
    narrowed: bool = False, left_recipes: str | None = None,
) -> Pivot:
    """Trials that ran to an outcome, rows = configuration without `by`, columns = `by`'s values.
    `narrowed`: the sweep over `by` of one recipe (`narrow`), at most SCREEN_ROWS rows, saying what was left out;
    `left_recipes` as in `build_report` (the runs are that recipe's already)."""
    if by not in PIVOT_FIELDS:
        raise UsageError(unknown_choice("--by", by, PIVOT_FIELDS, listed_in=PIVOT_FIELDS_LISTED))
    chosen = [run for run in runs if run_filter.accepts(run)]
    if left_recipes is None:
        chosen, left_recipes = narrow(chosen, run_filter.named() | {by}, by) if narrowed else (chosen, "")
    selected, _ = count_once([run for run in chosen if run.status in OUTCOMES])
    row_fields = pivot_row_fields(selected, by)
    table: dict[tuple, dict[object, list[RunRecord]]] = defaultdict(lambda: defaultdict(list))
    for run in selected:
        table[tuple(getattr(run, name) for name in row_fields)][getattr(run, by)].append(run)
    columns = tuple(sorted({getattr(run, by) for run in selected}, key=value_order))
    rows = [pivot_row(row_labels(row_fields, key, cells), cells, metric) for key, cells in table.items()]
    rows.sort(key=lambda row: pivot_sort_key(row.labels))
    left_rows = f"{SCREEN_ROWS} of {len(rows)} rows shown (--where narrows, --all shows every row)"
    left = tuple(n for n in (left_recipes, left_rows if narrowed and len(rows) > SCREEN_ROWS else "") if n)
    rows = rows[:SCREEN_ROWS] if narrowed else rows
    shown = {run_id for row in rows for cell in row.cells.values() for run_id in cell.run_ids}
    kept = [run for run in chosen if run.id in shown or run.status not in OUTCOMES]
    comparisons = build_report(kept, metric).comparisons
    held = off_default([r for r in selected if r.id in shown], (by, *row_fields))
    return Pivot(by, metric, columns, row_fields, tuple(rows), comparisons, left, held)


def row_labels(row_fields: tuple[str, ...], key: tuple, cells: dict[object, list[RunRecord]]) -> dict:
    """The row's identity; with `fused` too where it is no row field but one value among the row's trials it
    acts on (the implementation's label: custom+fused for a row of bn=none, pre and post)."""
    labels = dict(zip(row_fields, key))
    if "fused" not in labels:
        members = [run for runs in cells.values() for run in runs]
        fused = {run.fused for run in members if "fused" not in options_without_effect(run)}
        if len(fused) == 1:
            labels["fused"] = fused.pop()
    return labels


def pivot_sort_key(labels: dict) -> tuple:
    return (
        labels.get("arch", ""),
        BN_ORDER.get(labels.get("bn"), 9),
        labels.get("bn_impl") != "custom",
        bool(labels.get("fused")),
        tuple(value_order(v) for k, v in labels.items() if k not in IDENTITY),
    )


def pivot_row(labels: dict, runs_by_value: dict, metric: str) -> PivotRow:
    cells = {}
    for value, members in runs_by_value.items():
        completed = [r for r in members if r.status == RunStatus.COMPLETED]
        values = [v for r in completed if (v := metric_value(r, metric)) is not None]
        cells[value] = Cell(
            summarize(values), len(members) - len(completed), len(members), tuple(r.id for r in members), tuple(values)
        )
    sign = 1 if metric in HIGHER_IS_BETTER else -1
    scored = [(sign * c.summary.mean, value) for value, c in cells.items() if c.summary.mean is not None]
    return PivotRow(labels, cells, max(scored, key=lambda pair: pair[0])[1] if scored else None)
