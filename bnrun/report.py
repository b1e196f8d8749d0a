"""Aggregation of completed trials: groups by configuration, mean ± sample std across seeds,
paired comparisons by seed, and grid completeness. Pure functions over store records."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime

from bnrun.stats import MIN_TRIALS, PairedTest, Summary, paired_t_test, summarize, with_holm
from bnrun.store import RunRecord
from bnrun.store.storage import OUTCOMES

IDENTITY = ("arch", "bn", "bn_impl", "fused")
HYPERPARAMETERS = ("precision", "channels_last", "epochs", "batch_size", "lr", "momentum", "weight_decay", "optimizer", "schedule",
                   "augment", "train_subset", "depth", "width", "dropout")
METRICS = {
    "test_acc_population": "test acc. (population stats)",
    "test_acc_running": "test acc. (running averages)",
    "best_val_acc": "best val. acc.",
    "val_acc": "final val. acc.",
    "train_loss": "final train loss",
    "seconds_per_epoch": "s / epoch",
    "gen_gap": "train − test acc.",
    "gen_gap_loss": "test − train loss",
    "train_gap": "last-epoch train − test acc.",
}
PERCENT_METRICS = {"test_acc_population", "test_acc_running", "best_val_acc", "val_acc", "gen_gap", "train_gap"}
HIGHER_IS_BETTER = PERCENT_METRICS - {"gen_gap", "train_gap"}
BN_ORDER = {"pre": 0, "post": 1, "none": 2}


@dataclass(frozen=True)
class RunFilter:
    archs: tuple[str, ...] = ()
    placements: tuple[str, ...] = ()
    impls: tuple[str, ...] = ()
    run_ids: frozenset[int] | None = None
    since: datetime | None = None
    where: tuple[tuple[str, str], ...] = ()  # (option, value): keep trials whose option has this value

    def accepts(self, run: RunRecord) -> bool:
        return ((not self.archs or run.arch in self.archs) and (not self.placements or run.bn in self.placements)
                and (not self.impls or run.bn_impl in self.impls)
                and (self.run_ids is None or run.id in self.run_ids)
                and (self.since is None or run.started_at >= self.since)
                and all(option_matches(getattr(run, name), value) for name, value in self.where))


def option_matches(stored: object, text: str) -> bool:
    """A stored option value against its command-line spelling: 0.1 == 1e-1, true == True, none == NULL."""
    if stored is None or text.lower() == "none":
        return stored is None and text.lower() == "none"
    if isinstance(stored, bool):
        return text.lower() in (("true", "1", "yes") if stored else ("false", "0", "no"))
    if isinstance(stored, (int, float)):
        try:
            return float(text) == float(stored)
        except ValueError:
            return False
    return str(stored) == text


def parse_where(items: list[str]) -> tuple[tuple[str, str], ...]:
    """['epochs=10', 'batch_size=128'] -> (('epochs', '10'), ('batch_size', '128'))."""
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not value.strip():
            raise ValueError(f"--where: {item!r} is not OPTION=VALUE, e.g. epochs=10")
        if name not in PIVOT_FIELDS:
            raise ValueError(f"--where: unknown option {name!r}; choose from {', '.join(PIVOT_FIELDS)}")
        pairs.append((name, value.strip()))
    return tuple(pairs)


@dataclass(frozen=True)
class Group:
    key: tuple  # IDENTITY values, then HYPERPARAMETERS values
    runs: tuple[RunRecord, ...]  # completed only, by seed
    stats: dict[str, Summary]
    in_progress: int = 0  # running trials of this configuration
    expected_seeds: int = MIN_TRIALS  # what the grid asked for (or --seeds)

    def value(self, name: str) -> object:
        return dict(zip(IDENTITY + HYPERPARAMETERS, self.key))[name]

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(run.seed for run in self.runs)

    def label(self) -> str:
        impl = self.value("bn_impl") + ("+fused" if self.value("fused") else "")
        return f"{self.value('arch')} bn={self.value('bn')}" + ("" if self.value("bn") == "none" else f" ({impl})")


@dataclass(frozen=True)
class Comparison:
    arch: str
    a: str
    b: str
    metric: str
    test: PairedTest
    seeds: tuple[int, ...]
    setting: str = ""  # the varying hyperparameters both groups share, e.g. "lr=0.1, epochs=10"


@dataclass(frozen=True)
class Report:
    groups: tuple[Group, ...]
    varying: tuple[str, ...]  # hyperparameters that differ between groups (shown as columns)
    excluded: dict[str, int]  # status -> trials left out
    comparisons: tuple[Comparison, ...]
    metric: str
    best: dict[str, tuple]  # arch -> key of the group with the best headline mean
    per_seed: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)  # group key -> {summary: Summary} (diagnostic_summaries)
    repeats: tuple[int, ...] = ()  # runs not counted: a later run of the same configuration and seed is


def metric_value(run: RunRecord, name: str) -> float | None:
    if name == "seconds_per_epoch":
        return None if not run.duration_s or not run.epochs_completed else run.duration_s / run.epochs_completed
    if name in GAPS:
        high, low = (getattr(run, field) for field in GAPS[name])
        return None if high is None or low is None else high - low
    return getattr(run, name)


# The generalization gap (Zhang et al., 2017): the final model in prediction mode on the training
# split against the test split; train_gap uses the last epoch's running training accuracy
# (training mode, augmented batches), the only train measure of trials stored before 0005.
GAPS = {
    "gen_gap": ("train_acc_population", "test_acc_population"),
    "gen_gap_loss": ("test_loss_population", "train_loss_population"),
    "train_gap": ("train_acc", "test_acc_population"),
}


def group_key(run: RunRecord) -> tuple:
    return tuple(getattr(run, name) for name in IDENTITY + HYPERPARAMETERS)


def sort_key(key: tuple) -> tuple:
    arch, bn, impl, fused = key[:4]
    return (arch, BN_ORDER.get(bn, 9), impl != "custom", fused, tuple(str(v) for v in key[4:]))


def build_groups(runs: list[RunRecord], expected_seeds: int | None = None) -> list[Group]:
    """Completed trials grouped by configuration; the expected seed count is `expected_seeds`,
    else the largest grid any trial of the configuration was started in, else MIN_TRIALS."""
    completed, running, grid = defaultdict(list), Counter(), Counter()
    for run in runs:
        key = group_key(run)
        grid[key] = max(grid[key], run.grid_seeds or 0)
        if run.status == "completed":
            completed[key].append(run)
        elif run.status == "running":
            running[key] += 1
    groups = []
    for key in sorted(completed, key=sort_key):
        members = tuple(sorted(completed[key], key=lambda r: (r.seed, r.id)))
        stats = {name: summarize([v for r in members if (v := metric_value(r, name)) is not None]) for name in METRICS}
        groups.append(Group(key, members, stats, running[key], expected_seeds or grid[key] or MIN_TRIALS))
    return groups


def varying_hyperparameters(groups: list[Group]) -> tuple[str, ...]:
    return tuple(name for name in HYPERPARAMETERS if len({g.value(name) for g in groups}) > 1)


def best_per_arch(groups: list[Group], metric: str) -> dict[str, tuple]:
    best: dict[str, Group] = {}
    sign = 1 if metric in HIGHER_IS_BETTER else -1
    for group in groups:
        mean = group.stats[metric].mean
        current = best.get(group.value("arch"))
        if mean is not None and (current is None or sign * mean > sign * current.stats[metric].mean):
            best[group.value("arch")] = group
    return {arch: group.key for arch, group in best.items()}


def paired_comparisons(groups: list[Group], metric: str, varying: tuple[str, ...] = ()) -> list[Comparison]:
    """pre − post and BN − none within each arch (and identical hyperparameters), custom − torch
    for the same placement; paired over the seeds both groups completed. The custom BN's groups
    are compared on each path they ran (eager or fused) with the partner on the same path where it
    has one (pre − post), else with the partner as it ran (no BN, torch.nn)."""
    by_key = {g.key: g for g in groups}
    wanted = [("pre", "custom", "post", "custom"), ("pre", "custom", "none", "custom"), ("post", "custom", "none", "custom"),
              ("pre", "custom", "pre", "torch"), ("post", "custom", "post", "torch")]
    comparisons = []
    for group in groups:
        arch, bn, impl, fused = group.key[:4]
        for bn_a, impl_a, bn_b, impl_b in wanted:
            if (bn, impl) != (bn_a, impl_a):
                continue
            other_impl = "custom" if bn_b == "none" else impl_b
            other_fused = fused if (bn_b != "none" and impl_b == "custom") else False
            other = by_key.get((arch, bn_b, other_impl, other_fused) + group.key[4:])
            if other is None:
                continue
            setting = ", ".join(f"{name}={group.value(name)}" for name in varying)
            comparisons.append(replace(compare(group, other, metric), setting=setting))
    return comparisons


def compare(a: Group, b: Group, metric: str) -> Comparison:
    values_a = {r.seed: metric_value(r, metric) for r in a.runs}
    values_b = {r.seed: metric_value(r, metric) for r in b.runs}
    seeds = tuple(sorted(s for s in values_a if s in values_b and values_a[s] is not None and values_b[s] is not None))
    test = paired_t_test([values_a[s] for s in seeds], [values_b[s] for s in seeds])
    return Comparison(a.value("arch"), a.label(), b.label(), metric, test, seeds)


def count_once(runs: list[RunRecord]) -> tuple[list[RunRecord], tuple[int, ...]]:
    """Each (configuration, seed) that ran to an outcome counted once, by its latest run; the ids
    of the older repeats (two sweeps that ran the same trial before claims existed, or --force)."""
    latest: dict[tuple, RunRecord] = {}
    for run in sorted(runs, key=lambda r: r.id):
        if run.status in OUTCOMES:
            latest[group_key(run), run.seed] = run
    kept = {run.id for run in latest.values()}
    repeats = tuple(r.id for r in runs if r.status in OUTCOMES and r.id not in kept)
    return [r for r in runs if r.id in kept or r.status not in OUTCOMES], repeats


def build_report(runs: list[RunRecord], metric: str = "test_acc_population", run_filter: RunFilter = RunFilter(),
                 expected_seeds: int | None = None) -> Report:
    selected, repeats = count_once([run for run in runs if run_filter.accepts(run)])
    groups = build_groups(selected, expected_seeds)
    excluded = dict(Counter(run.status for run in selected if run.status not in ("completed", "running")))
    per_seed = {g.key: {r.seed: {"run_id": r.id, **{m: metric_value(r, m) for m in METRICS}} for r in g.runs} for g in groups}
    varying = varying_hyperparameters(groups)
    return Report(tuple(groups), varying, excluded, corrected(paired_comparisons(groups, metric, varying)),
                  metric, best_per_arch(groups, metric), per_seed, repeats=repeats)


def corrected(comparisons: list[Comparison]) -> tuple[Comparison, ...]:
    """The comparisons with Holm-adjusted p-values, the family being every comparison reported."""
    tests = with_holm([c.test for c in comparisons])
    return tuple(replace(c, test=t) for c, t in zip(comparisons, tests))


def parse_run_ids(text: str) -> frozenset[int]:
    """'1-12,15' -> {1, ..., 12, 15}."""
    ids: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"--run-id: {part!r} is not an id or a range like 1-12")
        ids.update(range(int(low), int(high or low) + 1))
    return frozenset(ids)


# -- pivots: one option's values as columns (`bnrun report --by lr`) ------------------------------

PIVOT_FIELDS = IDENTITY + HYPERPARAMETERS


@dataclass(frozen=True)
class Cell:
    summary: Summary  # of the completed trials
    diverged: int
    ended: int  # completed + diverged: the trials that ran to an outcome
    run_ids: tuple[int, ...]

    def value_text(self, scale: float, digits: int, pm: str = "±") -> str:
        mean, std = self.summary.mean, self.summary.std
        if mean is None:
            return ""
        return f"{mean * scale:.{digits}f}" + ("" if std is None else f" {pm} {std * scale:.{digits}f}")

    def flag_text(self) -> str:
        return f"diverged {self.diverged}/{self.ended}" if self.diverged else ""

    def text(self, scale: float, digits: int, pm: str = "±") -> str:
        return " · ".join(p for p in (self.value_text(scale, digits, pm), self.flag_text()) if p) or "—"


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


def pivot_row_fields(runs: list[RunRecord], by: str) -> tuple[str, ...]:
    """arch, bn and bn_impl, then whatever else varies among the runs (fused, other options)."""
    def varies(name: str) -> bool:
        return len({getattr(r, name) for r in runs}) > 1
    shown = tuple(name for name in ("arch", "bn", "bn_impl") if name != by)
    return shown + tuple(name for name in ("fused",) + HYPERPARAMETERS if name != by and varies(name))


def build_pivot(runs: list[RunRecord], by: str, metric: str = "test_acc_population", run_filter: RunFilter = RunFilter()) -> Pivot:
    """Trials that ran to an outcome, rows = configuration without `by`, columns = `by`'s values."""
    if by not in PIVOT_FIELDS:
        raise ValueError(f"cannot pivot by {by!r}; choose from {', '.join(PIVOT_FIELDS)}")
    selected, _ = count_once([run for run in runs if run_filter.accepts(run) and run.status in OUTCOMES])
    row_fields = pivot_row_fields(selected, by)
    table: dict[tuple, dict[object, list[RunRecord]]] = defaultdict(lambda: defaultdict(list))
    for run in selected:
        table[tuple(getattr(run, name) for name in row_fields)][getattr(run, by)].append(run)
    columns = tuple(sorted({getattr(run, by) for run in selected}, key=lambda v: (v is None, v)))
    rows = [pivot_row(dict(zip(row_fields, key)), cells, metric) for key, cells in table.items()]
    rows.sort(key=lambda row: pivot_sort_key(row.labels))
    comparisons = build_report(runs, metric, run_filter).comparisons
    return Pivot(by, metric, columns, row_fields, tuple(rows), comparisons)


def pivot_sort_key(labels: dict) -> tuple:
    return (labels.get("arch", ""), BN_ORDER.get(labels.get("bn"), 9), labels.get("bn_impl") != "custom",
            bool(labels.get("fused")), tuple(str(v) for k, v in labels.items() if k not in IDENTITY))


def pivot_row(labels: dict, runs_by_value: dict, metric: str) -> PivotRow:
    cells = {}
    for value, members in runs_by_value.items():
        completed = [r for r in members if r.status == "completed"]
        values = [v for r in completed if (v := metric_value(r, metric)) is not None]
        cells[value] = Cell(summarize(values), len(members) - len(completed), len(members), tuple(r.id for r in members))
    sign = 1 if metric in HIGHER_IS_BETTER else -1
    scored = [(sign * c.summary.mean, value) for value, c in cells.items() if c.summary.mean is not None]
    return PivotRow(labels, cells, max(scored, key=lambda pair: pair[0])[1] if scored else None)


# -- diagnostics per group (runs trained with --diagnostics) -----------------------------------------

DIAGNOSTIC_SUMMARIES = {
    "stable_eta": "largest η with r(η) < 1 at init",
    "mode_gap": "val. gap, prediction − batch stats, last epoch (points)",
    "beta_smoothness": "β-smoothness, last epoch",
    "loss_range": "loss range along ∇L, last epoch",
}


def run_diagnostic_summary(records: list, epochs: list) -> dict[str, float]:
    """The per-run numbers the report aggregates (only those the run has)."""
    values: dict[str, float] = {}
    helps = [r.x for r in records if r.kind == "loss_ratio" and r.value is not None and r.value < 1]
    if any(r.kind == "loss_ratio" for r in records):
        values["stable_eta"] = max(helps) if helps else 0.0
    last = max((r.epoch for r in records), default=0)
    final = {r.kind: r.value for r in records if r.epoch == last and r.name == "model" and r.value is not None}
    epoch = next((e for e in epochs if e.epoch == last), None)
    if epoch is not None and "val_acc_batch_stats" in final:
        values["mode_gap"] = 100 * (epoch.val_acc - final["val_acc_batch_stats"])
    for kind in ("beta_smoothness", "loss_range"):
        if kind in final:
            values[kind] = final[kind]
    return values


def diagnostic_summaries(groups: tuple[Group, ...], diagnostics: dict, epochs: dict) -> dict[tuple, dict[str, Summary]]:
    """{group key: {summary name: mean ± std over the group's runs with diagnostics}}."""
    result = {}
    for group in groups:
        per_run = [run_diagnostic_summary(diagnostics.get(r.id, []), epochs.get(r.id, [])) for r in group.runs]
        per_run = [values for values in per_run if values]
        if per_run:
            result[group.key] = {name: summarize([v[name] for v in per_run if name in v]) for name in DIAGNOSTIC_SUMMARIES}
    return result
