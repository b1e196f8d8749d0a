"""Runs and epochs as CSV or JSON (`bnrun export runs|epochs`): every stored field, plain values,
accuracies in percent (as every other view shows them), timestamps in ISO 8601. Pure functions over
store records."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, fields
from datetime import datetime

from bnrun.store import EpochRecord, RunLabels, RunRecord

EXPORT_FORMATS = ("csv", "json")


def run_rows(runs: list[RunRecord], labels: dict[int, RunLabels]) -> list[dict]:
    """Each run's stored fields and its tags."""
    return [{**plain(asdict(run)), "tags": list(labels[run.id].tags) if run.id in labels else []} for run in runs]


def epoch_rows(epochs: dict[int, list[EpochRecord]]) -> list[dict]:
    return [{"run_id": run_id, **plain(asdict(epoch))} for run_id, records in epochs.items() for epoch in records]


def is_accuracy(field: str) -> bool:
    """A stored accuracy (a fraction in the store, exported in percent)."""
    return "_acc" in field or field.endswith("acc")


def plain(row: dict) -> dict:
    """Timestamps in ISO 8601, accuracies in percent (rounded to what a float holds of 4 places)."""
    def value_of(key: str, value: object) -> object:
        if isinstance(value, datetime):
            return value.isoformat(sep=" ")
        if is_accuracy(key) and isinstance(value, float):
            return round(100 * value, 10)
        return value
    return {key: value_of(key, value) for key, value in row.items()}


def render(rows: list[dict], fmt: str, columns: list[str]) -> str:
    """CSV (a header row, then one row per record; lists joined with ';', None empty) or JSON."""
    if fmt == "json":
        return json.dumps(rows, indent=1) + "\n"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: ";".join(value) if isinstance(value, list) else value for key, value in row.items()})
    return buffer.getvalue()


RUN_COLUMNS = [f.name for f in fields(RunRecord)] + ["tags"]
EPOCH_COLUMNS = ["run_id"] + [f.name for f in fields(EpochRecord)]
