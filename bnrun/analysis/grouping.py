"""Aggregation of completed trials: filters, groups by configuration, mean ± sample std across
seeds, paired comparisons by seed, and grid completeness. Pure functions over store records."""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime

from bnrun.analysis.metrics import HIGHER_IS_BETTER, METRICS, metric_value
from bnrun.analysis.stats import MIN_TRIALS, PairedTest, Summary, paired_t_test, summarize, with_holm
from bnrun.config import (
    DEFAULT_EPOCHS,
    TRAIN_FIELDS,
    TrainConfig,
    bn_text,
    canonical_model,
    counted,
    impl_label,
    option_text,
)
from bnrun.store import OUTCOMES, RunRecord, RunStatus

IDENTITY = ("arch", "bn", "bn_impl", "fused")
# The rest of a trial's identity, in TrainConfig's order (where a trial ran, its device, is not part of it).
HYPERPARAMETERS = tuple(name for name in TRAIN_FIELDS if name not in (*IDENTITY, "device"))
BN_ORDER = {"pre": 0, "post": 1, "none": 2}


PIVOT_FIELDS = IDENTITY + HYPERPARAMETERS  # the options a filter (--where) or a pivot (--by) can name
# Where an unknown name's error points, rather than naming all of PIVOT_FIELDS on one line: each is an option
# of bnrun train, as its --help spells it or with underscores.
PIVOT_FIELDS_LISTED = "see bnrun train --help, e.g. lr"
# The options that make the training recipe; precision and memory layout, like the fused path, only change
# how the same math is computed, so a report of the default recipe keeps them (as columns where they vary).
RECIPE = tuple(name for name in HYPERPARAMETERS if name not in ("precision", "channels_last"))


def default_recipe(arch: str) -> dict[str, object]:
    """The training defaults (TrainConfig's, with the arch's default epochs) of the RECIPE options."""
    return dict(_default_recipe_items(arch))


@functools.cache  # asked once per run of a report: built once per architecture
def _default_recipe_items(arch: str) -> tuple[tuple[str, object], ...]:
    config = canonical_model(TrainConfig(arch=arch, epochs=DEFAULT_EPOCHS.get(arch, TrainConfig.epochs)))
    return tuple((name, getattr(config, name)) for name in RECIPE)


def off_recipe(run: RunRecord) -> tuple[str, ...]:
    """The RECIPE options whose value in `run` is not the training default."""
    defaults = default_recipe(run.arch)
    return tuple(name for name in RECIPE if getattr(run, name) != defaults[name])


def value_order(value: object) -> tuple:
    """Sorts one option's values: numbers as numbers, None last."""
    if value is None:
        return (2, 0, "")
    if isinstance(value, (int, float)):
        return (0, value, "")
    return (1, 0, str(value))


@dataclass(frozen=True)
class RunFilter:
    archs: tuple[str, ...] = ()
    placements: tuple[str, ...] = ()
    impls: tuple[str, ...] = ()  # implementation names or labels: custom (fused or not), custom+fused, torch
    run_ids: frozenset[int] | None = None
    since: datetime | None = None
    where: tuple[tuple[str, tuple], ...] = ()  # (option, values): keep trials whose option has one of these values

    def accepts(self, run: RunRecord) -> bool:
        return (
            (not self.archs or run.arch in self.archs)
            and (not self.placements or run.bn in self.placements)
            and (not self.impls or run.bn_impl in self.impls or impl_label(run.bn_impl, run.fused) in self.impls)
            and (self.run_ids is None or run.id in self.run_ids)
            and (self.since is None or run.started_at >= self.since)
            and all(getattr(run, name) in values for name, values in self.where)
        )

    def is_empty(self) -> bool:
        return self == RunFilter()

    def named(self) -> frozenset[str]:
        """The options --where chose values of."""
        return frozenset(name for name, _ in self.where)


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

    def label(self, varying: tuple[str, ...] = ()) -> str:
        """'cnn bn=pre (custom+fused)', then the `varying` options' values: 'cnn bn=none, lr=0.1'."""
        text = f"{self.value('arch')} {bn_text(self.value('bn'), self.value('bn_impl'), self.value('fused'))}"
        return ", ".join([text, *(f"{name}={option_text(self.value(name))}" for name in varying)])


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
    per_arch: dict = field(default_factory=dict)  # arch -> {option: value} for options set per arch (a caption)
    left_out: tuple[str, ...] = ()  # what a narrowed selection left out, and how to see it
    recipe: dict = field(default_factory=dict)  # {option: value}: off the training default in every group

    def label(self, group: Group) -> str:
        """The group's label with every option that varies among the groups: no two groups share one."""
        return group.label(self.varying)


def group_key(run: RunRecord) -> tuple:
    return tuple(getattr(run, name) for name in IDENTITY + HYPERPARAMETERS)


def sort_key(key: tuple) -> tuple:
    arch, bn, impl, fused = key[:4]
    return (arch, tuple(value_order(v) for v in key[4:]), BN_ORDER.get(bn, 9), impl != "custom", fused)


def build_groups(runs: list[RunRecord], expected_seeds: int | None = None) -> list[Group]:
    """Completed trials grouped by configuration; the expected seed count is `expected_seeds`,
    else the largest grid any trial of the configuration was started in, else MIN_TRIALS."""
    completed, running, grid = defaultdict(list), Counter(), Counter()
    for run in runs:
        key = group_key(run)
        grid[key] = max(grid[key], run.grid_seeds or 0)
        if run.status == RunStatus.COMPLETED:
            completed[key].append(run)
        elif run.status == RunStatus.RUNNING:
            running[key] += 1
    groups = []
    for key in sorted(completed, key=sort_key):
        members = tuple(sorted(completed[key], key=lambda r: (r.seed, r.id)))
        stats = {name: summarize([v for r in members if (v := metric_value(r, name)) is not None]) for name in METRICS}
        groups.append(Group(key, members, stats, running[key], expected_seeds or grid[key] or MIN_TRIALS))
    return groups


def varying_hyperparameters(groups: list[Group]) -> tuple[str, ...]:
    """The options that differ between groups of one architecture (columns, and part of every label)."""
    by_arch = defaultdict(list)
    for group in groups:
        by_arch[group.value("arch")].append(group)
    return tuple(
        name for name in HYPERPARAMETERS if any(len({g.value(name) for g in same}) > 1 for same in by_arch.values())
    )


def per_arch_settings(groups: list[Group], varying: tuple[str, ...]) -> dict[str, dict[str, object]]:
    """{arch: {option: value}} for the options that are constant within each architecture but differ
    between architectures (the per-arch defaults: epochs, channels_last); empty when nothing differs."""
    archs = list(dict.fromkeys(g.value("arch") for g in groups))
    names = [n for n in HYPERPARAMETERS if n not in varying and len({g.value(n) for g in groups}) > 1]
    if not names:
        return {}
    first = {g.value("arch"): g for g in groups}
    return {arch: {name: first[arch].value(name) for name in names} for arch in archs}


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
    wanted = [
        ("pre", "custom", "post", "custom"),
        ("pre", "custom", "none", "custom"),
        ("post", "custom", "none", "custom"),
        ("pre", "custom", "pre", "torch"),
        ("post", "custom", "post", "torch"),
    ]
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
            setting = ", ".join(f"{name}={option_text(group.value(name))}" for name in varying)
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


SCREEN_ROWS = 16  # the groups (or pivot rows) a report shows without --all: what one screen holds
SHOWN_RECIPES = 3  # the other recipes a caption names, largest first


def spelled(value: object) -> str:
    """An option's value as --where takes it: 0.05, none, true."""
    if value is None or isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def recipe_key(run: RunRecord, named: frozenset[str]) -> tuple[tuple[str, object], ...]:
    """The run's RECIPE options off the training default, leaving out the `named` ones (a filter or a pivot
    chose them): runs with the same key come from the same recipe."""
    defaults = default_recipe(run.arch)
    return tuple((n, getattr(run, n)) for n in RECIPE if n not in named and getattr(run, n) != defaults[n])


def choose_recipe(recipes: dict[tuple, list[RunRecord]], sweep: str | None) -> tuple:
    """The default recipe where it holds trials that ran to an outcome, else the one with the most completed
    trials (then outcomes); with a `sweep` option, only recipes in which that option takes several values
    compete (where any does)."""
    def ended(key: tuple) -> list[RunRecord]:
        return [run for run in recipes[key] if run.status in OUTCOMES]

    candidates = [key for key in recipes if ended(key)] or list(recipes)
    if sweep is not None:
        candidates = [k for k in candidates if len({getattr(r, sweep) for r in ended(k)}) > 1] or candidates
    if () in candidates:
        return ()
    completed = lambda key: sum(run.status == RunStatus.COMPLETED for run in recipes[key])
    return max(sorted(candidates, key=repr), key=lambda key: (completed(key), len(ended(key))))


def where_text(runs: list[RunRecord], names: list[str]) -> str:
    """The --where options that select these runs' values of `names`."""
    return " ".join(
        f"--where {n}={','.join(spelled(v) for v in sorted({getattr(r, n) for r in runs}, key=value_order))}"
        for n in names
    )


def narrow(runs: list[RunRecord], named: frozenset[str] = frozenset(), sweep: str | None = None
           ) -> tuple[list[RunRecord], str]:
    """The trials of one recipe (`choose_recipe`) among `runs`, which differ in options nobody `named`, and a
    note naming the recipes left out, each with the --where that selects it ("" when nothing was left out)."""
    recipes: dict[tuple, list[RunRecord]] = defaultdict(list)
    for run in runs:
        recipes[recipe_key(run, named)].append(run)
    if len(recipes) <= 1:
        return runs, ""
    chosen = choose_recipe(recipes, sweep)
    others = sorted((key for key in recipes if key != chosen),
                    key=lambda key: (-len(recipes[key]), min(run.id for run in recipes[key])))
    names = dict.fromkeys(name for key in (chosen, *others) for name, _ in key)
    listed = [f"{where_text(recipes[key], [n for n in names if n in dict(key) or n in dict(chosen)])} "
              f"({counted(len(recipes[key]), 'trial')})" for key in others[:SHOWN_RECIPES]]
    more = f"; and {len(others) - SHOWN_RECIPES} more" if len(others) > SHOWN_RECIPES else ""
    left = len(runs) - len(recipes[chosen])
    return recipes[chosen], (
        f"shown: {'the default recipe' if chosen == () else 'the largest recipe'}; left out: {left:,} of {len(runs):,} "
        f"trials, in {counted(len(others), 'other recipe')}: {'; '.join(listed)}{more}; --all shows every trial"
    )


def off_default(runs: list[RunRecord], shown: tuple[str, ...] = ()) -> dict[str, object]:
    """The RECIPE options that every run shares at a value off the training default (a caption must name them),
    leaving out the `shown` ones."""
    settings = {}
    for name in RECIPE:
        values = {getattr(run, name) for run in runs}
        if name not in shown and len(values) == 1 and any(getattr(r, name) != default_recipe(r.arch)[name]
                                                            for r in runs):
            settings[name] = values.pop()
    return settings


def on_one_screen(groups: list[Group]) -> tuple[list[Group], str]:
    """At most SCREEN_ROWS groups, and what was left out ("" when nothing was)."""
    if len(groups) <= SCREEN_ROWS:
        return groups, ""
    return groups[:SCREEN_ROWS], (
        f"{SCREEN_ROWS} of {len(groups)} groups shown; left out: "
        + "; ".join(g.label(varying_hyperparameters(groups)) for g in groups[SCREEN_ROWS:SCREEN_ROWS + 3])
        + ("" if len(groups) <= SCREEN_ROWS + 3 else f" and {len(groups) - SCREEN_ROWS - 3} more")
        + " (--where narrows, --all shows every group)"
    )


def build_report(
    runs: list[RunRecord],
    metric: str = "test_acc_population",
    run_filter: RunFilter = RunFilter(),
    expected_seeds: int | None = None,
    narrowed: bool = False,
    left_recipes: str | None = None,
) -> Report:
    """`narrowed`: one recipe of the filter's trials (`narrow`) on one screen (`on_one_screen`), saying what
    was left out; else every trial the filter accepts. `left_recipes`: the runs are one recipe's already (the
    store chose it: `queries.one_recipes_runs`), and this is its note on the others."""
    chosen = [run for run in runs if run_filter.accepts(run)]
    if left_recipes is None:
        chosen, left_recipes = narrow(chosen, run_filter.named()) if narrowed else (chosen, "")
    selected, repeats = count_once(chosen)
    groups = build_groups(selected, expected_seeds)
    groups, left_groups = on_one_screen(groups) if narrowed else (groups, "")
    counted = (RunStatus.COMPLETED, RunStatus.RUNNING)
    excluded = dict(Counter(run.status for run in selected if run.status not in counted))
    per_seed = {
        g.key: {r.seed: {"run_id": r.id, **{m: metric_value(r, m) for m in METRICS}} for r in g.runs} for g in groups
    }
    varying = varying_hyperparameters(groups)
    return Report(
        tuple(groups),
        varying,
        excluded,
        corrected(paired_comparisons(groups, metric, varying)),
        metric,
        best_per_arch(groups, metric),
        per_seed,
        repeats=repeats,
        per_arch=per_arch_settings(groups, varying),
        left_out=tuple(note for note in (left_recipes, left_groups) if note),
        recipe=off_default([run for g in groups for run in g.runs], varying),
    )


def corrected(comparisons: list[Comparison]) -> tuple[Comparison, ...]:
    """The comparisons with Holm-adjusted p-values, the family being every comparison reported."""
    tests = with_holm([c.test for c in comparisons])
    return tuple(replace(c, test=t) for c, t in zip(comparisons, tests))
