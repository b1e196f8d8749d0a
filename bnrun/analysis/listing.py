"""The runs a listing shows (`bnrun runs`, `bnrun export runs`): filtered by tags and options,
sorted by any field or metric, cut to a limit; and which options vary among them. Pure
functions over store records."""

from __future__ import annotations

from dataclasses import dataclass, fields

from bnrun.analysis.grouping import HYPERPARAMETERS, RunFilter
from bnrun.analysis.metrics import METRICS, metric_value
from bnrun.config import TrainConfig, impl_text
from bnrun.errors import unknown_choice
from bnrun.store import RunRecord

SORT_FIELDS = tuple(f.name for f in fields(RunRecord) if f.name != "config_json") + tuple(
    name for name in METRICS if name not in {f.name for f in fields(RunRecord)}
)
# What a listing can show as a column when it varies (in this order); the rest lives in `show`.
LISTED_OPTIONS = ("arch", "bn", "impl", "seed") + HYPERPARAMETERS


@dataclass(frozen=True)
class RunQuery:
    """What `bnrun runs` and `bnrun export runs` select, and in which order."""

    run_filter: RunFilter = RunFilter()
    statuses: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    deleted: bool | None = False  # False: leave soft-deleted runs out; True: only them; None: both
    sort: str = "id"  # a field or metric; a leading "-" sorts descending
    limit: int | None = None


def sort_key_name(sort: str) -> tuple[str, bool]:
    """'-test_acc_population' -> ('test_acc_population', True); ValueError names the fields."""
    given, descending = sort.removeprefix("-"), sort.startswith("-")
    name = given.replace("-", "_")
    if name not in SORT_FIELDS:
        raise ValueError(unknown_choice("--sort", given, SORT_FIELDS, "field",
                                        "e.g. id, lr, test_acc_population; -id sorts descending"))
    return name, descending


def select_runs(runs: list[RunRecord], query: RunQuery) -> list[RunRecord]:
    """The runs the query selects, sorted (missing values last either way) and limited."""
    name, descending = sort_key_name(query.sort)
    chosen = [
        run for run in runs if query.run_filter.accepts(run) and (not query.statuses or run.status in query.statuses)
    ]
    present = [run for run in chosen if sort_value(run, name) is not None]
    missing = [run for run in chosen if sort_value(run, name) is None]
    present.sort(key=lambda run: (sort_value(run, name), run.id), reverse=descending)
    ordered = present + missing
    return ordered if query.limit is None else ordered[: query.limit]


def sort_value(run: RunRecord, name: str):
    return metric_value(run, name) if name in METRICS else getattr(run, name)


def option_value(run: RunRecord, name: str):
    """A listed option's value ("impl" is the implementation label)."""
    return impl_text(run.bn, run.bn_impl, run.fused) if name == "impl" else getattr(run, name)


def varying_options(runs: list[RunRecord]) -> tuple[str, ...]:
    """The listed options whose value differs among the runs."""
    return tuple(name for name in LISTED_OPTIONS if len({option_value(run, name) for run in runs}) > 1)


def shared_options(runs: list[RunRecord]) -> dict[str, object]:
    """The options every run shares, where they say something: the model, and any option off its
    training default."""
    if not runs:
        return {}
    defaults = TrainConfig()
    always = ("arch", "bn", "impl", "epochs")
    shared = {}
    for name in LISTED_OPTIONS:
        values = {option_value(run, name) for run in runs}
        if len(values) != 1:
            continue
        (value,) = values
        if name in always or (
            hasattr(defaults, name) and getattr(defaults, name) != value and name not in ("channels_last",)
        ):
            shared[name] = value
    return shared
