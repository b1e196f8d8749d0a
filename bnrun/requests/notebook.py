"""Results into a notebook: `bnrun.load(db).runs(where=...)` is a pandas DataFrame with one row per run
(its options and metrics as columns, accuracies in percent as in `bnrun report`), `.epochs(ids)` their
curves. The store is opened read-only (never created or changed); pandas is the `notebook` extra."""

from __future__ import annotations

from collections.abc import Iterable

from bnrun.analysis.grouping import HYPERPARAMETERS, IDENTITY, PIVOT_FIELDS, RunFilter
from bnrun.analysis.metrics import METRICS, metric_value, scale
from bnrun.config import impl_text
from bnrun.errors import UsageError
from bnrun.requests.parsing import CHOICES, option_kind, option_value
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
    """{option: value or list of values} as a RunFilter, each value checked as `--where` checks it (the
    choices of a named option, a number for a numeric one; a string is parsed as on the command line);
    UsageError names an unknown option or the valid values."""
    checked = []
    for name, given in (where or {}).items():
        if name not in WHERE_FIELDS:
            raise UsageError(f"where: unknown option {name!r}; choose from {', '.join(WHERE_FIELDS)}")
        values = tuple(given) if isinstance(given, (list, tuple, set, frozenset)) else (given,)
        checked.append((name, tuple(typed_value(name, value) for value in values)))
    return RunFilter(where=tuple(checked))


def typed_value(name: str, value: object) -> object:
    """A `where` value as the store holds it: a string goes through `--where`'s parser; None, a bool or a
    number is checked against the option's type."""
    if name not in PIVOT_FIELDS:  # seed, status: compared as given
        return value
    if isinstance(value, str):
        try:
            return option_value(name, value)
        except UsageError as error:  # the command line's words, in the notebook's
            raise UsageError(str(error).replace("--where ", "where ")) from None
    kind = option_kind(name)
    fits = value is None or (isinstance(value, bool) if kind is bool else
                             isinstance(value, int | float) and not isinstance(value, bool) and kind in (int, float))
    if not fits or name in CHOICES:
        raise UsageError(f"where {name}={value!r}: {name} takes "
                         f"{', '.join(CHOICES[name]) if name in CHOICES else kind.__name__} values")
    return value


def run_row(run: RunRecord) -> dict[str, object]:
    """One run's options and metrics; each metric in the report's unit (accuracies in percent)."""
    row = {name: getattr(run, name) for name in RUN_COLUMNS if name not in METRICS and name != "impl"}
    row["impl"] = impl_text(run.bn, run.bn_impl, run.fused)
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
