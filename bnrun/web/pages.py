"""What each page shows, read from a store opened read-only: plain dicts for the templates. The report's
numbers are the analysis layer's (`report_of`, `pivot_of`, the JSON report's records), the runs' the
store's records (`bnrun export runs`' rows)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlencode

from bnrun.analysis import texts
from bnrun.analysis.claims import evaluate, evidence_text, load_claims, numbers_text, result_record, rule_text
from bnrun.analysis.comparison import FINAL_METRICS, difference, value_text
from bnrun.analysis.diagnostic_summaries import DIAGNOSTIC_SUMMARIES
from bnrun.analysis.export import RUN_COLUMNS, epoch_rows, render, run_rows
from bnrun.analysis.grouping import RECIPE, Comparison, Report, value_order
from bnrun.analysis.listing import RunQuery, option_value, shared_options, sort_key_name, varying_options
from bnrun.analysis.machine import comparison_record, group_records
from bnrun.analysis.metrics import METRICS, metric_value, scaled_pair
from bnrun.analysis.pivots import Pivot
from bnrun.analysis.queries import ReportRequest, criteria_of, pivot_of, report_of
from bnrun.config import bn_text, impl_label
from bnrun.errors import NothingMatched, UsageError
from bnrun.store import STATUSES, RunCriteria, RunRecord, RunStatus, Store
from bnrun.web import charts
from bnrun.web.params import RunsPage

HEADLINE = ("test_acc_population", "test_acc_running", "best_val_acc", "train_loss")
PROVENANCE = ("started_at", "ended_at", "duration_s", "heartbeat_at", "bn_path", "kernel_isa", "bnrun_version",
              "torch_version", "python_version", "git_commit", "host", "pid", "executor", "device", "cpu_model",
              "torch_threads", "gpu_name", "cuda_version", "cudnn_version", "gpu_driver", "tf32",
              "cudnn_deterministic", "grid_seeds", "config_key")


def comparison_rows(comparisons: tuple[Comparison, ...]) -> list[dict]:
    """The JSON report's comparison records, with Δ and its interval in the metric's display unit."""
    rows = []
    for c in comparisons:
        record = comparison_record(c)
        mean, std = scaled_pair(c.test.mean_diff, c.test.std_diff, c.metric)
        low, high = scaled_pair(c.test.ci_low, c.test.ci_high, c.metric)
        rows.append({**record, "shown": {"diff": mean, "std": std, "low": low, "high": high}})
    return rows


def report_page(store: Store, request: ReportRequest, then: str | None = None) -> dict:
    """The report (or, with `by`, the pivot) as `bnrun report` computes it, with its figures: the learning
    curves and the diagnostics its runs recorded (or the sensitivity and every trial of the grid, and with
    `then` the sensitivity at each value of that second option)."""
    if request.by:
        pivot = pivot_of(store, request)
        run_ids = [run_id for row in pivot.rows for cell in row.cells.values() for run_id in cell.run_ids]
        runs = store.get_runs(run_ids)
        context = pivot_context(pivot, {run.id: run for run in runs})
        if then:
            held = shared_recipe(runs, (request.by, then))
            context["figures"].append(charts.sensitivity_by(then, pivots_at(store, request, then, held)))
        return context
    return report_context(*report_of(store, request))


SECOND_VALUES = 6  # the values of a second option drawn, the first in its order


def shared_recipe(runs: list[RunRecord], free: tuple[str, ...]) -> tuple[tuple[str, tuple], ...]:
    """The recipe options (but `free`) that all `runs` set alike, as --where conditions: what a pivot's trials
    hold, so that the pivots beside it are drawn from the same recipe."""
    held = []
    for name in RECIPE:
        values = {getattr(run, name) for run in runs}
        if name not in free and len(values) == 1:
            held.append((name, (values.pop(),)))
    return tuple(held)


def pivots_at(store: Store, request: ReportRequest, then: str,
              held: tuple[tuple[str, tuple], ...] = ()) -> list[tuple[object, Pivot]]:
    """The pivot at each of the first SECOND_VALUES values of option `then` among the trials the request
    selects, each from the recipe `held` (a value where no trial of it ran to an outcome is left out)."""
    counted = store.option_counts(criteria_of(request.run_filter), (then,))
    values = sorted({row[0] for row in counted}, key=value_order)[:SECOND_VALUES]
    pivots = []
    for value in values:
        narrowed = replace(request.run_filter, where=(*request.run_filter.where, *held, (then, (value,))))
        try:
            pivots.append((value, pivot_of(store, replace(request, run_filter=narrowed))))
        except NothingMatched:
            continue
    return pivots


def bold_note(report: Report) -> str:
    """Why a row is bold: the best of its architecture in the headline metric, and only in it."""
    return (f"bold: per architecture, the group with the best mean {METRICS[report.metric]} (the headline metric); "
            "the other columns are not ranked, so a larger number there is not bold")


def report_context(report: Report, epochs: dict, diagnostics: dict | None = None) -> dict:
    """The report's page (and the HTML report's body); with `diagnostics` (the runs' records), their figures."""
    groups = [
        {"values": texts.row_values(report, group), "record": record, "best": record["best_in_arch"]}
        for group, record in zip(report.groups, group_records(report))
    ]
    figures = charts.group_curves(report, epochs)
    if diagnostics:
        figures += charts.group_diagnostics(report, diagnostics, epochs)
    return {
        "kind": "report",
        "metric": report.metric,
        "header": texts.header_names(report),
        "left": 3 + len(report.varying),
        "groups": groups,
        "notes": [bold_note(report), *texts.footnotes(report)],
        "diagnostics_header": ["group", *DIAGNOSTIC_SUMMARIES.values()],
        "diagnostics": texts.diagnostic_rows(report),
        "heading": texts.comparisons_heading(report.comparisons),
        "comparisons": comparison_rows(report.comparisons),
        "figures": figures,
    }


def pivot_context(pivot: Pivot, runs: dict[int, RunRecord] | None = None) -> dict:
    rows = [
        {"labels": texts.pivot_label_values(pivot, row), "cells": texts.pivot_cells(pivot, row),
         "means": [row.cells[v].summary.mean if v in row.cells else None for v in pivot.columns]}
        for row in pivot.rows
    ]
    return {
        "kind": "pivot",
        "metric": pivot.metric,
        "header": texts.pivot_header(pivot),
        "left": len(pivot.row_fields),
        "rows": rows,
        "notes": texts.pivot_notes(pivot),
        "heading": texts.comparisons_heading(pivot.comparisons),
        "comparisons": comparison_rows(pivot.comparisons),
        "figures": [charts.sensitivity(pivot), *([charts.grid(pivot, runs)] if runs else [])],
    }


def page_arguments(query: RunQuery) -> dict:
    """A listing query as `Store.page_runs`' filters and order."""
    f = query.run_filter
    equal = [("arch", f.archs), ("bn", f.placements), ("status", query.statuses), *f.where]
    name, descending = sort_key_name(query.sort)
    return {"equal": tuple((column, values) for column, values in equal if values), "impls": f.impls,
            "run_ids": f.run_ids, "since": f.since, "tags": query.tags, "deleted": query.deleted, "sort": name,
            "descending": descending}


def page_of(store: Store, page: RunsPage):
    """The page's runs as the store cuts them, and how many pages there are; past the last page is
    NothingMatched (a 404), not an empty page."""
    found = store.page_runs(**page_arguments(page.query), limit=page.per_page, offset=page.offset)
    pages = max(1, -(-found.total // page.per_page))
    if page.page > pages:
        raise NothingMatched(f"page {page.page} of {pages}: past the last page of these runs")
    return found, pages


def runs_page(store: Store, page: RunsPage, choices: FilterChoices) -> dict:
    """One page of the listing, sorted, filtered and cut in the database; the filters' `choices`."""
    found, pages = page_of(store, page)
    runs = list(found.runs)
    labels = store.labels([run.id for run in runs])
    orphans = store.orphan_ids() if any(run.status == RunStatus.RUNNING for run in runs) else set()
    options = varying_options(runs) or ("arch", "bn")
    return {
        "choices": choices.of(store),
        "page_tags": sorted({tag for run in runs for tag in labels[run.id].tags}),
        "runs": [run_row(run, labels[run.id], options, run.id in orphans) for run in runs],
        "options": options,
        "shared": shared_options(runs),
        "metrics": {name: METRICS[name] for name in HEADLINE},
        "total": found.total,
        "page": page.page,
        "pages": pages,
        "running": any(run.status == RunStatus.RUNNING for run in runs),
    }


def run_row(run: RunRecord, labels, options: tuple[str, ...], orphan: bool) -> dict:
    return {
        "id": run.id,
        "status": run.status + (" (process gone)" if orphan else ""),
        "options": [option_value(run, name) for name in options],
        "metrics": [metric_text(run, name) for name in HEADLINE],
        "progress": f"{run.epochs_completed}/{run.epochs}",
        "heartbeat": run.heartbeat_at,
        "tags": labels.tags,
        "note": labels.user_note or run.note,
    }


def metric_text(run: RunRecord, name: str) -> str:
    value, _ = scaled_pair(getattr(run, name), None, name)
    return "—" if value is None else (f"{value:.3f}" if name == "train_loss" else f"{value:.2f}")


def run_page(store: Store, run_id: int) -> dict:
    """One run: configuration, provenance, curves, diagnostics, evaluations, checkpoint."""
    run = store.get_run(run_id)
    epochs = store.epochs(run_id)
    diagnostics = store.diagnostics_by_run([run_id])[run_id]
    return {
        "run": run,
        "labels": store.labels([run_id])[run_id],
        "config": json.loads(run.config_json),
        "provenance": {name: getattr(run, name) for name in PROVENANCE},
        "metrics": {METRICS[name]: metric_text(run, name) for name in HEADLINE},
        "epochs": epochs,
        "figures": charts.run_curves({f"run {run_id}": epochs}),
        "diagnostic_figures": charts.run_diagnostics(diagnostics, epochs),
        "diagnostics": diagnostics,
        "evaluations": store.evaluations(run_id),
        "checkpoint": store.checkpoint_info(run_id),
    }


def compare_page(store: Store, run_ids: list[int]) -> dict:
    """Several runs: their curves overlaid, the final metrics with each run's difference from the first (as
    `bnrun compare A B` gives B − A), and the configuration fields where they differ."""
    runs = store.get_runs(run_ids)
    epochs = store.epochs_by_run(run_ids)
    configs = {run.id: {**json.loads(run.config_json), "seed": run.seed} for run in runs}  # the seed is no option
    names = sorted({name for config in configs.values() for name in config})
    differing = [name for name in names if len({json.dumps(c.get(name)) for c in configs.values()}) > 1]
    return {
        "runs": runs,
        "config_diff": [(name, [configs[run.id].get(name) for run in runs]) for name in differing],
        "shared": [(name, configs[runs[0].id].get(name)) for name in names if name not in differing],
        "metrics": [final_metric(label, kind, [metric_value(run, name) for run in runs])
                    for label, name, kind in FINAL_METRICS],
        "differences": [f"{run.id} − {runs[0].id}" for run in runs[1:]],
        "figures": charts.run_curves({f"run {run.id}": epochs[run.id] for run in runs}),
    }


def final_metric(label: str, kind: str, values: list[float | None]) -> dict:
    """One row of compare's final metrics: each run's value, and each later run's difference from the first."""
    return {"label": label, "kind": kind, "values": [value_text(kind, value) for value in values],
            "differences": [difference(kind, values[0], value) for value in values[1:]]}


def api_runs(store: Store, page: RunsPage) -> dict:
    """`/api/runs`: one page of `bnrun export runs`' records, with the count of matches."""
    found, pages = page_of(store, page)
    runs = list(found.runs)
    return {"total": found.total, "page": page.page, "pages": pages, "per_page": page.per_page,
            "runs": run_rows(runs, store.labels([run.id for run in runs]))}


def api_run(store: Store, run_id: int) -> dict:
    """`/api/runs/<id>`: the run's `bnrun export runs` record, with its `bnrun export epochs` rows as "per_epoch"."""
    run = store.get_run(run_id)
    return {**run_rows([run], store.labels([run_id]))[0], "per_epoch": epoch_rows({run_id: store.epochs(run_id)})}


# -- a store where nothing has completed yet; downloads; filter choices; claims -----------------------------------

RUNNING_SHOWN = 50


def running_instead(store: Store) -> dict | None:
    """What `/` shows while no trial has completed: the running trials (the first RUNNING_SHOWN, newest first)
    and how many; None when one has completed or none runs."""
    if store.count_runs(RunCriteria(equal=(("status", (RunStatus.COMPLETED,)),))):
        return None
    found = store.page_runs(equal=(("status", (RunStatus.RUNNING,)),), sort="id", descending=True,
                            limit=RUNNING_SHOWN)
    if not found.total:
        return None
    return {"total": found.total, "runs": [{"id": run.id, "label": run_label(run), "progress":
                                           f"{run.epochs_completed}/{run.epochs}", "heartbeat": run.heartbeat_at}
                                          for run in found.runs]}


def run_label(run: RunRecord) -> str:
    return f"{run.arch} {bn_text(run.bn, run.bn_impl, run.fused)} seed {run.seed}"


EXPORT_CHUNK = 2000  # runs read per query while a download streams


def export_chunks(store: Store, query: RunQuery, fmt: str) -> Iterator[str]:
    """`bnrun export runs`' CSV or JSON of every run the query selects, in pieces of EXPORT_CHUNK runs."""
    arguments = page_arguments(query)
    offset = 0
    yield "[\n" if fmt == "json" else ",".join(RUN_COLUMNS) + "\n"
    while True:
        runs = list(store.page_runs(**arguments, limit=EXPORT_CHUNK, offset=offset).runs)
        if not runs:
            break
        rows = run_rows(runs, store.labels([run.id for run in runs]))
        if fmt == "json":
            yield ("" if offset == 0 else ",\n") + ",\n".join(json.dumps(row) for row in rows)
        else:
            yield render(rows, "csv", RUN_COLUMNS).split("\n", 1)[1]
        offset += len(runs)
    yield "\n]\n" if fmt == "json" else ""


CHOICE_COLUMNS = ("arch", "bn", "study")


class FilterChoices:
    """The values the store holds for each filter the listing offers as a choice: the statuses a run can have,
    and from the store arch, bn, study and the implementations (as their labels). A run's options never change,
    so the values are read again only when runs were added or purged (the count of rows or the newest id
    changed): a grouped count per column scans every row, too slow to repeat per page at 100,000 runs."""

    def __init__(self) -> None:
        self.key: tuple[int, int] | None = None
        self.values: dict[str, list[str]] = {}

    def of(self, store: Store) -> dict[str, list[str]]:
        newest = store.page_runs(deleted=None, sort="id", descending=True, limit=1).runs
        key = (store.count_runs(), newest[0].id if newest else 0)
        if key != self.key:
            self.values, self.key = read_choices(store), key
        return {"status": list(STATUSES), **self.values}


def read_choices(store: Store) -> dict[str, list[str]]:
    everything = RunCriteria(deleted=None)
    choices = {name: sorted({str(row[0]) for row in store.option_counts(everything, (name,)) if row[0] is not None})
               for name in CHOICE_COLUMNS}
    choices["bn_impl"] = sorted({impl_label(impl, fused) for impl, fused, *_ in
                                 store.option_counts(everything, ("bn_impl", "fused"))})
    return choices


def claims_page(store: Store, path: Path) -> dict:
    """Each declared claim: its rule, verdict, effect and interval, the evidence audit and its runs."""
    try:
        results = evaluate(store, load_claims(path))
    except UsageError as error:
        return {"claims": [], "problem": str(error), "path": str(path)}
    return {"claims": [claim_row(result) for result in results], "problem": None, "path": str(path)}


def claim_row(result) -> dict:
    record = result_record(result)
    ids = list(result.run_ids)
    return {
        **record,
        "rule_text": rule_text(result.claim),
        "numbers": numbers_text(result),
        "evidence": evidence_text(result),
        "runs_query": urlencode({"run_id": id_ranges(ids), "per_page": 500}) if ids else "",
        "compare": ",".join(map(str, ids)) if 2 <= len(ids) <= 12 else "",
    }


def id_ranges(ids: list[int]) -> str:
    """'1-5,9,12-14': run ids as --run-id takes them."""
    spans: list[list[int]] = []
    for run_id in sorted(set(ids)):
        if spans and spans[-1][1] == run_id - 1:
            spans[-1][1] = run_id
        else:
            spans.append([run_id, run_id])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
