"""What each page shows, read from a store opened read-only: plain dicts for the templates. The report's
numbers are the analysis layer's (`report_of`, `pivot_of`, the JSON report's records), the runs' the
store's records (`bnrun export runs`' rows)."""

from __future__ import annotations

import json

from bnrun.analysis import texts
from bnrun.analysis.comparison import FINAL_METRICS
from bnrun.analysis.export import epoch_rows, run_rows
from bnrun.analysis.grouping import Comparison, Report
from bnrun.analysis.listing import RunQuery, option_value, sort_key_name, varying_options
from bnrun.analysis.machine import comparison_record, group_records
from bnrun.analysis.metrics import METRICS, metric_value, scaled_pair
from bnrun.analysis.pivots import Pivot
from bnrun.analysis.queries import ReportRequest, pivot_of, report_of
from bnrun.errors import NothingMatched
from bnrun.store import RunRecord, RunStatus, Store
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


def report_page(store: Store, request: ReportRequest) -> dict:
    """The report (or, with `by`, the pivot) as `bnrun report` computes it, with its figures."""
    if request.by:
        return pivot_context(pivot_of(store, request))
    report, epochs = report_of(store, request)
    return report_context(report, epochs)


def report_context(report: Report, epochs: dict) -> dict:
    groups = [
        {"values": texts.row_values(report, group), "record": record, "best": record["best_in_arch"]}
        for group, record in zip(report.groups, group_records(report))
    ]
    return {
        "kind": "report",
        "metric": report.metric,
        "header": texts.header_names(report),
        "left": 3 + len(report.varying),
        "groups": groups,
        "notes": texts.footnotes(report),
        "heading": texts.comparisons_heading(report.comparisons),
        "comparisons": comparison_rows(report.comparisons),
        "figures": charts.group_curves(report, epochs),
    }


def pivot_context(pivot: Pivot) -> dict:
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
        "figures": [charts.sensitivity(pivot)],
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


def runs_page(store: Store, page: RunsPage) -> dict:
    """One page of the listing, sorted, filtered and cut in the database."""
    found, pages = page_of(store, page)
    runs = list(found.runs)
    labels = store.labels([run.id for run in runs])
    orphans = store.orphan_ids() if any(run.status == RunStatus.RUNNING for run in runs) else set()
    options = varying_options(runs) or ("arch", "bn")
    return {
        "runs": [run_row(run, labels[run.id], options, run.id in orphans) for run in runs],
        "options": options,
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
    return {
        "run": run,
        "labels": store.labels([run_id])[run_id],
        "config": json.loads(run.config_json),
        "provenance": {name: getattr(run, name) for name in PROVENANCE},
        "metrics": {METRICS[name]: metric_text(run, name) for name in HEADLINE},
        "epochs": epochs,
        "figures": charts.run_curves({f"run {run_id}": epochs}),
        "diagnostics": store.diagnostics_by_run([run_id])[run_id],
        "evaluations": store.evaluations(run_id),
        "checkpoint": store.checkpoint_info(run_id),
    }


def compare_page(store: Store, run_ids: list[int]) -> dict:
    """Several runs: their curves overlaid, and the configuration fields where they differ."""
    runs = store.get_runs(run_ids)
    epochs = store.epochs_by_run(run_ids)
    configs = {run.id: {**json.loads(run.config_json), "seed": run.seed} for run in runs}  # the seed is no option
    names = sorted({name for config in configs.values() for name in config})
    differing = [name for name in names if len({json.dumps(c.get(name)) for c in configs.values()}) > 1]
    return {
        "runs": runs,
        "config_diff": [(name, [configs[run.id].get(name) for run in runs]) for name in differing],
        "shared": [(name, configs[runs[0].id].get(name)) for name in names if name not in differing],
        "metrics": [(label, kind, [metric_value(run, name) for run in runs]) for label, name, kind in FINAL_METRICS],
        "figures": charts.run_curves({f"run {run.id}": epochs[run.id] for run in runs}),
    }


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
