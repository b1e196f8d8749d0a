"""Results into a notebook: `bnrun.load(db).runs(where=...)` is a pandas DataFrame with one row per run
(its options and metrics as columns, accuracies in percent as in `bnrun report`), `.epochs(ids)` their
curves. The store is opened read-only (never created or changed); pandas is the `notebook` extra."""

from __future__ import annotations

from collections.abc import Iterable

from bnrun.analysis.grouping import HYPERPARAMETERS, IDENTITY, PIVOT_FIELDS, RunFilter
from bnrun.analysis.metrics import METRICS, metric_value, scale
from bnrun.config import impl_label
from bnrun.errors import UsageError
from bnrun.store import RunRecord, RunStatus, Store

RUN_COLUMNS = ("id", "status", "seed", "impl", *IDENTITY, *HYPERPARAMETERS, *METRICS, "duration_s", "started_at")
EPOCH_PERCENT = ("train_acc", "val_acc")  # the epoch fields in percent
WHERE_FIELDS = (*PIVOT_FIELDS, "seed", "status")  # what `runs(where=...)` can name


def pandas():
    """pandas, or one line saying how to get it."""
    try:
        import pandas
    except ImportError:
        raise UsageError("the notebook API needs pandas: pip install 'bnrun[notebook]'") from None
    return pandas


def where_filter(where: dict[str, object] | None) -> RunFilter:
    """{option: value or list of values} as a RunFilter; UsageError names an unknown option."""
    unknown = [name for name in where or {} if name not in WHERE_FIELDS]
    if unknown:
        raise UsageError(f"where: unknown option {unknown[0]!r}; choose from {', '.join(WHERE_FIELDS)}")
    def values(value: object) -> tuple:
        return tuple(value) if isinstance(value, (list, tuple, set, frozenset)) else (value,)
    return RunFilter(where=tuple((name, values(value)) for name, value in (where or {}).items()))


def run_row(run: RunRecord) -> dict[str, object]:
    """One run's options and metrics; each metric in the report's unit (accuracies in percent)."""
    row = {name: getattr(run, name) for name in RUN_COLUMNS if name not in METRICS and name != "impl"}
    row["impl"] = impl_label(run.bn_impl, run.fused)
    for name in METRICS:
        value = metric_value(run, name)
        row[name] = None if value is None else value * scale(name)
    return row


class Results:
    """A store's results as DataFrames. Use as a context manager, or call `close`."""

    def __init__(self, db: str | None = None) -> None:
        self.store = Store(db, read_only=True)

    def runs(self, where: dict[str, object] | None = None, statuses: Iterable[str] = (RunStatus.COMPLETED,),
             ids: Iterable[int] | None = None):
        """One row per run that `where` ({option: value or values}) accepts, of these `statuses` (() for every
        status), and of these `ids` if given; the columns RUN_COLUMNS, accuracies in percent."""
        run_filter = where_filter(where)
        wanted = None if ids is None else set(ids)
        runs = [run for run in self.store.list_runs(statuses=tuple(statuses))
                if run_filter.accepts(run) and (wanted is None or run.id in wanted)]
        frame = pandas().DataFrame([run_row(run) for run in runs], columns=list(RUN_COLUMNS))
        frame.attrs["units"] = {name: "%" if scale(name) == 100.0 else "" for name in METRICS}
        return frame.set_index("id", drop=False)

    def epochs(self, ids: Iterable[int]):
        """The runs' per-epoch rows: run_id, epoch, losses, accuracies (percent), lr, seconds."""
        epochs = self.store.epochs_by_run([run.id for run in self.store.get_runs(list(ids))])
        rows = [{"run_id": run_id, **vars(epoch)} for run_id, records in epochs.items() for epoch in records]
        frame = pandas().DataFrame(rows)
        for name in EPOCH_PERCENT:
            if name in frame:
                frame[name] = frame[name] * 100.0
        return frame

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Results:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
