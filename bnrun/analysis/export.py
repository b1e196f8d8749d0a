"""Runs and epochs as CSV or JSON (`bnrun export runs|epochs`): every stored field, plain values,
timestamps in ISO 8601. Pure functions over store records."""

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
    return [{"run_id": run_id, **asdict(epoch)} for run_id, records in epochs.items() for epoch in records]


def plain(row: dict) -> dict:
    return {key: value.isoformat(sep=" ") if isinstance(value, datetime) else value for key, value in row.items()}


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
