"""The report's and the pivot's texts, shared by every format: columns, cells (percent for
accuracies, digits per metric), footnotes and the paired comparisons' lines."""

from __future__ import annotations

from bnrun.analysis.diagnostic_summaries import DIAGNOSTIC_SUMMARIES
from bnrun.analysis.grouping import Comparison, Group, Report, spelled
from bnrun.analysis.metrics import CHANCE, METRICS, digits, mean_std_text, metric_value, scaled_pair, signed
from bnrun.analysis.pivots import Pivot, PivotRow
from bnrun.analysis.stats import MIN_TRIALS, Summary
from bnrun.config import counted, impl_text, option_text

COLUMNS = ("test_acc_population", "test_acc_running", "best_val_acc", "train_loss", "seconds_per_epoch")
NARROW = ("test_acc_population", "test_acc_running")  # the terminal table's metrics without --wide
PLACEMENT_NAMES = {"pre": "pre: g(BN(f(x)))", "post": "post: BN(g(f(x)))", "none": "none"}
LABEL_COLUMNS = ("arch", "BN", "impl")  # the report's left-aligned columns


def columns(report: Report, wide: bool = True) -> tuple[str, ...]:
    """The headline metric first, then the others (without `wide`: one more, NARROW's first other, unless
    varying options already take the room)."""
    others = tuple(c for c in COLUMNS if c != report.metric)
    narrow = () if report.varying else tuple(c for c in NARROW if c != report.metric)[:1]
    return (report.metric,) + (others if wide else narrow)


def hidden_columns(report: Report) -> list[str]:
    """What the narrow terminal table leaves for --wide."""
    return [METRICS[c] for c in columns(report) if c not in columns(report, wide=False)]


def summary_text(summary: Summary, metric: str, pm: str = "±") -> str | None:
    """The summary in the metric's unit and digits; None when it has no mean."""
    mean, std = scaled_pair(summary.mean, summary.std, metric)
    return None if mean is None else mean_std_text(mean, std, digits(metric), pm)


def plain_cell(summary: Summary, metric: str) -> str:
    text = summary_text(summary, metric)
    return "—" if text is None else text


def seeds_cell(group: Group) -> str:
    text = f"{len(group.runs)}/{group.expected_seeds}"
    return text + (f" (+{group.in_progress} running)" if group.in_progress else "")


def impl_name(group: Group) -> str:
    return impl_text(group.value("bn"), group.value("bn_impl"), group.value("fused"))


def header_names(report: Report, wide: bool = True) -> list[str]:
    return ["arch", "BN", "impl", *report.varying, "seeds", *(METRICS[c] for c in columns(report, wide))]


def row_values(report: Report, group: Group, wide: bool = True) -> list[str]:
    return [group.value("arch"), group.value("bn"), impl_name(group),
            *(option_text(group.value(v)) for v in report.varying),
            seeds_cell(group), *(plain_cell(group.stats[c], c) for c in columns(report, wide))]


def settings_text(settings: dict) -> str:
    return ", ".join(f"{name}={option_text(value)}" for name, value in settings.items())


def recipe_line(settings: dict) -> str:
    """The options off the default recipe that every row shares ("" when none is)."""
    return f"off the default recipe: {spelled_settings(settings)}" if settings else ""


def spelled_settings(settings: dict) -> str:
    """'epochs=1, train_subset=1000': options as --where takes them."""
    return ", ".join(f"{name}={spelled(value)}" for name, value in settings.items())


def caption_lines(report: Report) -> list[str]:
    """What the table's rows share: the options set per architecture and the options off the default recipe;
    then what a narrowed selection left out."""
    lines = []
    if report.per_arch:
        lines.append("; ".join(f"{arch}: {settings_text(settings)}" for arch, settings in report.per_arch.items()))
    return lines + [line for line in (recipe_line(report.recipe),) if line] + list(report.left_out)


def is_best(report: Report, group: Group) -> bool:
    return report.best.get(group.value("arch")) == group.key


def footnotes(report: Report) -> list[str]:
    notes = caption_lines(report) + [f"mean ± sample std (n−1) over seeds; headline: {METRICS[report.metric]}"]
    if all(metric_value(run, report.metric) is None for group in report.groups for run in group.runs):
        notes.append(no_values_note(report.metric))
    if report.excluded:
        notes.append(
            "left out (not completed): " + ", ".join(f"{n} {status}" for status, n in sorted(report.excluded.items()))
        )
    if report.repeats:
        notes.append(
            f"runs {', '.join(map(str, report.repeats))} repeat a (configuration, seed) that a later run holds: "
            "each seed is counted once, by its latest run"
        )
    small = [report.label(g) for g in report.groups if len(g.runs) < MIN_TRIALS]
    if small:
        notes.append(f"fewer than {MIN_TRIALS} completed trials: " + "; ".join(small))
    return notes


def comparison_lines(comparisons: tuple[Comparison, ...]) -> list[str]:
    lines = []
    for c in comparisons:
        mean, std = scaled_pair(c.test.mean_diff, c.test.std_diff, c.metric)
        if mean is None:
            continue
        spread = f" ± {std:.2f}" if std is not None else ""
        setting = f" at {c.setting}" if c.setting else ""
        lines.append(
            f"{c.a} − {c.b}{setting}: {signed(mean)}{spread}{interval_text(c)} ({METRICS[c.metric]}, "
            f"paired by seed; {c.test.verdict()})"
        )
    return lines


def tested(comparisons: tuple[Comparison, ...]) -> int:
    """How many comparisons had a test: the family Holm's correction ran over."""
    return sum(c.test.p_value is not None for c in comparisons)


def holm_scope(comparisons: tuple[Comparison, ...]) -> str:
    """'p-values Holm–Bonferroni corrected over the 5 comparisons with a test', or why no comparison has one."""
    count = tested(comparisons)
    if not count:
        return "no p-values: a paired test needs two or more seeds a side"
    return f"p-values Holm–Bonferroni corrected over the {counted(count, 'comparison')} with a test"


def comparisons_heading(comparisons: tuple[Comparison, ...]) -> str:
    return (
        f"paired comparisons (same seed = same initial weights and batch order; 95% CI of the mean difference; "
        f"{holm_scope(comparisons)}):"
    )


def interval_text(c: Comparison) -> str:
    low, high = scaled_pair(c.test.ci_low, c.test.ci_high, c.metric)
    return "" if low is None else f", 95% CI [{signed(low)}, {signed(high)}]"


def diagnostic_cells(report: Report, group: Group) -> list[str]:
    summaries = report.diagnostics.get(group.key, {})
    cells = []
    for name in DIAGNOSTIC_SUMMARIES:
        s = summaries.get(name)
        cells.append(
            "—" if s is None or s.mean is None else f"{s.mean:.3g}" + ("" if s.std is None else f" ± {s.std:.2g}")
        )
    return cells


def diagnostic_rows(report: Report) -> list[list[str]]:
    """One row per group with diagnostics: its label, then DIAGNOSTIC_SUMMARIES' cells."""
    return [[report.label(g), *diagnostic_cells(report, g)] for g in report.groups if g.key in report.diagnostics]


def pivot_header(pivot: Pivot) -> list[str]:
    """The row fields as the report names them (bn_impl as impl, with the kernel in it unless fused is a field
    of its own), then one column per value of `by`."""
    names = [("impl" if name == "bn_impl" and "fused" not in pivot.row_fields else name) for name in pivot.row_fields]
    return [*names, *(f"{pivot.by}={option_text(value)}" for value in pivot.columns)]


def pivot_label_values(pivot: Pivot, row: PivotRow) -> list[str]:
    return [pivot_label(pivot, row.labels, name) for name in pivot.row_fields]


def pivot_label(pivot: Pivot, labels: dict, name: str) -> str:
    """One row label as the report's tables give it: impl as custom+fused, torch or — (no BN), yes/no for a flag."""
    value = labels[name]
    if name == "bn_impl" and "fused" not in pivot.row_fields:
        return impl_text(labels.get("bn"), value, bool(labels.get("fused")))
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def pivot_cells(pivot: Pivot, row: PivotRow) -> list[str]:
    return [row.cells[v].text(pivot.metric) if v in row.cells else "" for v in pivot.columns]


def no_values_note(metric: str) -> str:
    """Why every cell is empty: the trials shown lack the metric (trials stored before it was recorded)."""
    return f"no trial shown stores {METRICS[metric]}; --where or --all selects others"


def pivot_notes(pivot: Pivot) -> list[str]:
    held = "every other option held fixed at the default recipe" + (
        f" but {spelled_settings(pivot.held)}" if pivot.held else "")
    empty = all(cell.summary.mean is None for row in pivot.rows for cell in row.cells.values())
    chance = any("at chance" in cell.text(pivot.metric) for row in pivot.rows for cell in row.cells.values())
    return [held, *pivot.left_out, *([no_values_note(pivot.metric)] if empty else []),
        f"{METRICS[pivot.metric]} by {pivot.by}: mean ± sample std over seeds of the completed trials; "
        f"'diverged k/n': k of the n trials that ran to an outcome diverged (they are not in the mean)"
        + (f"; 'at chance': the completed trials ended at chance level ({100 * CHANCE:g} %)" if chance else "")
    ]
