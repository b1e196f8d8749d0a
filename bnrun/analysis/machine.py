"""The report and the pivot for programs: CSV (one row per group or cell, then one per paired
comparison) and JSON."""

from __future__ import annotations

import csv
import io
import json

from bnrun.analysis.grouping import Comparison, Report
from bnrun.analysis.metrics import METRICS
from bnrun.analysis.pivots import Pivot
from bnrun.analysis.texts import is_best
from bnrun.store import RunStatus


def comparison_record(c: Comparison) -> dict:
    t = c.test
    return {
        "arch": c.arch,
        "a": c.a,
        "b": c.b,
        "setting": c.setting,
        "metric": c.metric,
        "n": t.n,
        "seeds": list(c.seeds),
        "mean_diff": t.mean_diff,
        "std_diff": t.std_diff,
        "ci95_low": t.ci_low,
        "ci95_high": t.ci_high,
        "t": t.t,
        "p_value": t.p_value,
        "p_holm": t.p_holm,
        "significant_after_holm": t.significant(),
        "too_few_seeds": t.too_few,
        "verdict": t.verdict(),
    }


def group_records(report: Report) -> list[dict]:
    rows = []
    for group in report.groups:
        row = {name: group.value(name) for name in ("arch", "bn", "bn_impl", "fused", *report.varying)}
        row.update(
            n=len(group.runs),
            expected_seeds=group.expected_seeds,
            seeds=list(group.seeds),
            run_ids=[r.id for r in group.runs],
            best_in_arch=is_best(report, group),
        )
        for metric in METRICS:
            row[f"{metric}_mean"], row[f"{metric}_std"] = group.stats[metric].mean, group.stats[metric].std
        row["per_seed"] = {str(seed): values for seed, values in report.per_seed[group.key].items()}
        for name, summary in report.diagnostics.get(group.key, {}).items():
            row[f"diag_{name}_mean"], row[f"diag_{name}_std"] = summary.mean, summary.std
        rows.append(row)
    return rows


def cell_records(pivot: Pivot) -> list[dict]:
    rows = []
    for row in pivot.rows:
        for value, cell in row.cells.items():
            rows.append(
                {
                    **row.labels,
                    pivot.by: value,
                    "n": cell.summary.n,
                    "mean": cell.summary.mean,
                    "std": cell.summary.std,
                    RunStatus.DIVERGED: cell.diverged,
                    "ended": cell.ended,
                    "run_ids": list(cell.run_ids),
                    "best_in_row": value == row.best,
                }
            )
    return rows


def csv_text(row_type: str, records: list[dict], comparisons: tuple[Comparison, ...]) -> str:
    """The records (row_type `row_type`), then the comparisons; lists and dicts as JSON."""
    rows = [{"row_type": row_type, **row} for row in records]
    rows += [{"row_type": "comparison", **comparison_record(c)} for c in comparisons]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for row in rows for k in row)) or ["row_type"])
    writer.writeheader()
    writer.writerows({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def json_text(payload: dict, comparisons: tuple[Comparison, ...]) -> str:
    payload = {
        **payload,
        "comparisons": [comparison_record(c) for c in comparisons],
        "multiple_comparisons": "Holm–Bonferroni over all comparisons listed",
    }
    return json.dumps(payload, indent=2) + "\n"


def report_csv(report: Report) -> str:
    return csv_text("group", group_records(report), report.comparisons)


def report_json(report: Report) -> str:
    return json_text(
        {
            "metric": report.metric,
            "groups": group_records(report),
            "excluded": report.excluded,
            "repeats_not_counted": list(report.repeats),
        },
        report.comparisons,
    )


def pivot_csv(pivot: Pivot) -> str:
    return csv_text("cell", cell_records(pivot), pivot.comparisons)


def pivot_json(pivot: Pivot) -> str:
    return json_text(
        {"by": pivot.by, "metric": pivot.metric, "columns": list(pivot.columns), "cells": cell_records(pivot)},
        pivot.comparisons,
    )
