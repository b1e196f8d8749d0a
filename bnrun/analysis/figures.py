"""Figures (PNG, PDF or SVG by the file's extension; Agg backend), each a mean line with a ±std band
over seeds: learning curves per epoch; the headline metric against one option (`plot --x lr`); the
batch-norm diagnostics (`plot --diagnostic ...`); accuracy against the statistics batch size.
Bands stay inside the metric's range (0-100 % for accuracies), cells with fewer than three seeds show
their seeds as points instead of a band, and a figure refuses more series than it can tell apart."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, MaxNLocator, NullFormatter, StrMethodFormatter  # noqa: E402

from bnrun.analysis.diagnostic_summaries import diagnostic_series  # noqa: E402
from bnrun.analysis.grouping import Group, Report  # noqa: E402
from bnrun.analysis.metrics import CHANCE, HIGHER_IS_BETTER, at_chance  # noqa: E402
from bnrun.analysis.pivots import Pivot  # noqa: E402
from bnrun.analysis.provenance import metadata  # noqa: E402
from bnrun.analysis.stats import MIN_TRIALS, summarize  # noqa: E402
from bnrun.analysis.styles import Style, group_styles, label_styles  # noqa: E402
from bnrun.analysis.texts import recipe_line  # noqa: E402
from bnrun.config import bn_text  # noqa: E402
from bnrun.errors import UsageError, writing  # noqa: E402
from bnrun.store import EpochRecord  # noqa: E402

PANELS = (("val_acc", "validation accuracy (%)", 100.0), ("train_loss", "training loss", 1.0))
MAX_SERIES = 12  # more lines than this in one figure cannot be told apart
PERCENT_RANGE = (0.0, 100.0)


def check_series(count: int, varying: tuple[str, ...] | list[str], hint: str = "") -> None:
    """Refuse a figure of more than MAX_SERIES lines, naming the options that multiply them."""
    if count <= MAX_SERIES:
        return
    names = ", ".join(varying) or "the configurations"
    example = f" (e.g. --where {varying[0]}=VALUE)" if varying else ""
    raise UsageError(
        f"{count} series would share one figure (they differ in {names}); at most {MAX_SERIES} can be told apart: "
        f"add --where OPTION=VALUE{example} or --arch/--bn{hint}"
    )


def mean_and_std(values: list[list[float]]) -> tuple[list[float], list[float]]:
    """Per position, the mean and the sample std (0 for a single value) of the inner lists."""
    summaries = [summarize(column) for column in values]
    return [s.mean for s in summaries], [s.std or 0.0 for s in summaries]


def curve(group: Group, epochs: dict[int, list[EpochRecord]], field: str, scale: float):
    """Mean and std over the group's trials, epoch by epoch (up to the shortest trial)."""
    series = [[getattr(e, field) * scale for e in epochs[run.id]] for run in group.runs]
    length = min(len(s) for s in series)
    means, stds = mean_and_std([[s[epoch] for s in series] for epoch in range(length)])
    return list(range(1, length + 1)), means, stds


def fill_band(axis, xs: list, means: list[float], stds: list[float], line,
              bounds: tuple[float | None, float | None] = (None, None), where: list[bool] | None = None) -> None:
    """The ±std band around a line, clipped to the metric's `bounds`, drawn only `where` it means something."""
    low, high = bounds

    def clip(value: float) -> float:
        value = value if low is None else max(low, value)
        return value if high is None else min(high, value)

    axis.fill_between(xs, [clip(m - s) for m, s in zip(means, stds)], [clip(m + s) for m, s in zip(means, stds)],
                      color=line.get_color(), alpha=0.2, where=where, interpolate=False, linewidth=0)


def within(axis, bounds: tuple[float, float]) -> None:
    """Keep the y axis inside the metric's range (no accuracy below 0 % or above 100 %)."""
    bottom, top = axis.get_ylim()
    axis.set_ylim(max(bottom, bounds[0]), min(top, bounds[1] + 0.5))


def plot_learning_curves(
    report: Report, epochs: dict[int, list[EpochRecord]], output: Path, dpi: int = 120
) -> Path:
    groups = list(report.groups)
    check_series(len(groups), report.varying)
    archs = list(dict.fromkeys(g.value("arch") for g in groups))
    figure, axes = plt.subplots(len(archs), len(PANELS), figsize=(14, 3.8 * len(archs)), squeeze=False)
    for row, arch in enumerate(archs):
        for column, (field, label, scale) in enumerate(PANELS):
            axis = axes[row][column]
            in_arch = [g for g in groups if g.value("arch") == arch]
            for group, style in zip(in_arch, group_styles(in_arch)):
                x, mean, std = curve(group, epochs, field, scale)
                if not x:
                    continue
                name = f"{report.label(group)} (n={len(group.runs)})"
                (line,) = axis.plot(x, mean, markersize=3, label=name, **line_style(style))
                fill_band(axis, x, mean, std, line, PERCENT_RANGE if scale == 100.0 else (0.0, None))
            axis.set_title(f"{arch.upper()}: {label}")
            epoch_axis(axis)
            axis.set_ylabel(label)
            axis.grid(alpha=0.3)
            if field == "train_loss":
                log_scale(axis)
            else:
                within(axis, PERCENT_RANGE)
        outside_legend(axes[row][-1], *axes[row][0].get_legend_handles_labels())
    return save(figure, output, dpi, "Fashion-MNIST learning curves: mean ± std over seeds", recipe_line(report.recipe))


# The mantissas a log axis may label in each decade, coarsest first: it takes the first that leaves no stretch of
# more than LOG_GAP of its length unlabelled, its ends included.
LOG_MANTISSAS = ((1,), (1, 3), (1, 2, 5), (1, 1.5, 2, 3, 4, 6), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8))
LOG_GAP = 0.25


def log_scale(axis, x: bool = False) -> None:
    """`axis`'s y (with `x`, its x) on a log scale, labelled in plain decimals (0.2, not 2×10⁻¹) along its whole
    length (log_view)."""
    (axis.set_xscale if x else axis.set_yscale)("log")
    low, high, labelled = log_view(*(axis.get_xlim() if x else axis.get_ylim()))
    (axis.set_xlim if x else axis.set_ylim)(low, high)
    ticks = axis.xaxis if x else axis.yaxis
    ticks.set_major_locator(FixedLocator(labelled))
    ticks.set_major_formatter(StrMethodFormatter("{x:g}"))
    ticks.set_minor_formatter(NullFormatter())


def log_view(low: float, high: float) -> tuple[float, float, list[float]]:
    """A log axis's limits and labelled values: those of the coarsest LOG_MANTISSAS that label it every LOG_GAP of
    its length (the finest where none does)."""
    for mantissas in LOG_MANTISSAS:
        view = labelled_view(low, high, mantissas)
        if largest_gap(*view) <= LOG_GAP:
            break
    return view


def labelled_view(low: float, high: float, mantissas: tuple[float, ...]) -> tuple[float, float, list[float]]:
    """(low, high), an end widened to the next labelled value where none lies within LOG_GAP of it, and the values
    the mantissas label between them."""
    reach = (high / low) ** LOG_GAP
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    values = [float(f"{mantissa}e{decade}") for decade in decades for mantissa in mantissas]
    if not any(low <= value <= low * reach for value in values):
        low = max(value for value in values if value <= low)
    if not any(high / reach <= value <= high for value in values):
        high = min(value for value in values if value >= high)
    return low, high, [value for value in values if low <= value <= high]


def largest_gap(low: float, high: float, labelled: list[float]) -> float:
    """The longest stretch of a log axis from `low` to `high` without a label, as a fraction of its length."""
    at = [math.log(value / low) / math.log(high / low) for value in labelled]
    return max(b - a for a, b in zip([0.0, *at], [*at, 1.0]))


PANEL_WIDTH = 9.0  # inches of a panel with its legend to the right


def outside_legend(axis, handles: list | None = None, labels: list[str] | None = None) -> None:
    """The legend (of `handles` and `labels`, else the axis's own) to the right of the axis, outside it: no line,
    band or count runs under it (loc="best" weighs lines alone, and a corner free of them can hold a band)."""
    entries = (handles, labels) if handles is not None else ()
    axis.legend(*entries, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def epoch_axis(axis) -> None:
    """Whole epochs on the x axis, half an epoch of room either side (one epoch is one tick, not 0.95-1.05)."""
    low, high = axis.get_xlim()
    axis.set_xlim(min(low, 0.5), max(high, 1.5))
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def spans_decades(values: list[float]) -> bool:
    positive = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0]
    return len(positive) == len(values) and len(values) > 1 and max(positive) / min(positive) >= 10


MARKERS = {"circle": "o", "square": "s", "none": ""}  # styles.Style's markers as matplotlib names them


def line_style(style: Style) -> dict:
    """matplotlib's keywords for a group's Style, as the web view draws it: its colour, its marker and its dash
    (the SVG dash array, in matplotlib's units of the line's width)."""
    dashes = tuple(float(length) / LINE_WIDTH for length in style.dash.split())
    return {"color": style.color, "marker": MARKERS[style.marker], "linewidth": LINE_WIDTH,
            "linestyle": (0, dashes) if dashes else "-"}


LINE_WIDTH = 1.5


def row_label(labels: dict) -> str:
    bn = labels.get("bn")
    text = bn_text(bn, labels["bn_impl"], labels.get("fused")) if "bn_impl" in labels else f"bn={bn}"
    extras = [f"{k}={v}" for k, v in labels.items() if k not in ("arch", "bn", "bn_impl", "fused")]
    return text + (f", {', '.join(extras)}" if extras else "")


def set_values_only(pivot: Pivot) -> Pivot:
    """The pivot without the column of trials that leave the option unset (no point on a numeric axis)."""
    if None not in pivot.columns:
        return pivot
    rows = tuple(replace(row, cells={value: cell for value, cell in row.cells.items() if value is not None})
                 for row in pivot.rows)
    return replace(pivot, columns=tuple(value for value in pivot.columns if value is not None), rows=rows)


def plot_against_option(pivot: Pivot, output: Path, metric_label: str, scale: float, dpi: int = 120) -> Path:
    """The headline metric against one option: a mean line per placement with a ±std band where at
    least MIN_TRIALS seeds completed and the seeds as points where fewer did, one panel per
    architecture; in a strip below a panel, an x at each value where a line's trials diverged (labelled k/n) and a
    triangle at each value whose trials ended at chance, at that value, the marks at one value stacked; the caption
    names the options held off the default recipe."""
    check_series(len(pivot.rows), [f for f in pivot.row_fields if f not in ("arch", "bn", "bn_impl", "fused")])
    pivot = set_values_only(pivot)
    if len(pivot.columns) < 2:
        raise UsageError(f"--x {pivot.by}: the selected trials set it to fewer than two values; a plot against it "
                         f"needs two or more (bnrun report --by {pivot.by} shows what they hold)")
    bounds = PERCENT_RANGE if scale == 100.0 else (None, None)
    chance = pivot.metric in HIGHER_IS_BETTER  # an accuracy can be at chance; a gap cannot
    archs = list(dict.fromkeys(row.labels.get("arch", "all") for row in pivot.rows))
    rows = {arch: [r for r in pivot.rows if r.labels.get("arch", "all") == arch] for arch in archs}
    marks = {arch: stacked_marks(rows[arch], chance) for arch in archs}
    figure, panels = option_panels(len(archs), max((m.level + 1 for ms in marks.values() for m in ms), default=0))
    for (axis, strip), arch in zip(panels, archs):
        styles = label_styles([row.labels for row in rows[arch]])
        lines = [option_line(axis, row, style, scale, bounds, chance) for row, style in zip(rows[arch], styles)]
        if scale == 100.0:
            within(axis, PERCENT_RANGE)
        value_axis(axis, list(pivot.columns))
        if strip is not None:
            mark_strip(strip, marks[arch], lines)
        axis.set_title(f"{arch.upper()}: {metric_label} vs {pivot.by}")
        (axis if strip is None else strip).set_xlabel(pivot.by)
        axis.set_ylabel(metric_label)
        axis.grid(alpha=0.3)
        unique_legend(axis, {mark.kind for mark in marks[arch]})
    return save(figure, output, dpi, f"mean ± std over seeds (points: the seeds of cells with n < {MIN_TRIALS}), "
                                     f"by {pivot.by}", recipe_line(pivot.held))


STRIP_LEVEL = 0.22  # inches of the mark strip per mark stacked at one value


def option_panels(count: int, levels: int) -> tuple:
    """The figure and, per panel, (its axes, the strip of `levels` stacked marks below it, None without marks)."""
    if not levels:
        figure, axes = plt.subplots(1, count, figsize=(PANEL_WIDTH * count, 4.5), squeeze=False)
        return figure, [(axis, None) for axis in axes[0]]
    strip = STRIP_LEVEL * levels + 0.1
    figure, axes = plt.subplots(2, count, figsize=(PANEL_WIDTH * count, 4.5 + strip), squeeze=False, sharex="col",
                                height_ratios=(3.6, strip))
    return figure, list(zip(axes[0], axes[1]))


def value_axis(axis, values: list[float]) -> None:
    """The option's axis: logarithmic where its values span decades, ticked at the values run and no others."""
    log = spans_decades(values)
    if log:
        axis.set_xscale("log")
        axis.minorticks_off()  # the grid's own values label the axis, not 3×10¹
    value_limits(axis, values, log)
    axis.set_xticks(values, [f"{value:g}" for value in values])


def value_limits(axis, values: list[float], log: bool) -> None:
    """The x axis over every value of the grid, with room either side for a mark's count."""
    low, high = min(values), max(values)
    if log:
        pad = (high / low) ** 0.08
        axis.set_xlim(low / pad, high * pad)
    else:
        pad = (high - low) * 0.08 or 0.5
        axis.set_xlim(low - pad, high + pad)


MARKS = {  # the marks below a panel, in grey in the legend (each line's own in its colour)
    "diverged": {"marker": "x", "markersize": 8, "mew": 2},
    "chance": {"marker": "v", "markersize": 8},
}


@dataclass(frozen=True)
class Mark:
    """A mark in the strip below a panel: at `value`, the `level`-th (from the top) of the marks at that value."""

    row: int  # the pivot row's position in the panel, whose line's colour the mark takes
    value: float
    kind: str  # a key of MARKS
    text: str  # its count, k/n
    level: int


def stacked_marks(rows: list, chance: bool) -> list[Mark]:
    """Every mark of the rows' cells (Cell.marks), the marks at one value stacked in the rows' order."""
    taken: Counter = Counter()
    marks = []
    for index, row in enumerate(rows):
        for value, cell in sorted(row.cells.items(), key=lambda item: item[0]):
            for kind, text in cell.marks(chance):
                marks.append(Mark(index, value, kind, text, taken[value]))
                taken[value] += 1
    return marks


def mark_strip(strip, marks: list[Mark], lines: list) -> None:
    """The marks in the strip below a panel (sharing its x axis), each in its line's colour with its count beside it."""
    levels = max(mark.level for mark in marks) + 1 if marks else 1
    for mark in marks:
        line = lines[mark.row]
        color = line.get_color() if line is not None else "grey"
        strip.plot([mark.value], [mark.level], color=color, linestyle="none", gid=mark.kind, **MARKS[mark.kind])
        strip.annotate(mark.text, (mark.value, mark.level), xytext=(7, 0), textcoords="offset points", fontsize=7,
                       color=color, ha="left", va="center")
    strip.set_ylim(levels - 0.5, -0.5)
    strip.set_yticks([])
    strip.grid(axis="x", alpha=0.3)


def mark_label(kind: str) -> str:
    return "diverged (k/n trials)" if kind == "diverged" else f"chance level ({100 * CHANCE:g} %, n trials)"


def unique_legend(axis, kinds: set[str]) -> None:
    """The legend with each line once, then one grey entry per kind of mark drawn (`kinds`)."""
    handles, labels = axis.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for kind in sorted(kinds, reverse=True):
        seen[mark_label(kind)] = Line2D([], [], color="grey", linestyle="none", **MARKS[kind])
    outside_legend(axis, list(seen.values()), list(seen))


def option_line(axis, row, style: Style, scale: float, bounds: tuple, chance: bool):
    """One row of the pivot: its mean line, the band where n ≥ MIN_TRIALS, the seeds where n is smaller;
    with `chance`, cells at chance level are left to their marks."""
    done = [(v, c) for v, c in sorted(row.cells.items(), key=lambda item: item[0])
            if c.summary.mean is not None and not (chance and at_chance(c.summary.mean))]
    if not done:
        return None
    xs = [v for v, _ in done]
    means = [c.summary.mean * scale for _, c in done]
    stds = [(c.summary.std or 0.0) * scale for _, c in done]
    (line,) = axis.plot(xs, means, markersize=4, label=row_label(row.labels), **line_style(style))
    enough = [c.summary.n >= MIN_TRIALS for _, c in done]
    fill_band(axis, xs, means, stds, line, bounds, where=enough)
    for value, cell in done:
        if cell.summary.n < MIN_TRIALS and len(cell.values) > 1:
            axis.plot([value] * len(cell.values), [v * scale for v in cell.values], linestyle="none", marker="_",
                      markersize=10, mew=1.5, color=line.get_color(), alpha=0.8)
    return line


def save(figure, output: Path, dpi: int, title: str, caption: str = "") -> Path:
    """The figure under its title, and the `caption` (the options off the default recipe) below it."""
    figure.suptitle(title + (f"\n{caption}" if caption else ""))
    figure.tight_layout()
    try:
        with writing(output):
            figure.savefig(output, dpi=dpi, metadata=metadata(figure, output))
    finally:
        plt.close(figure)
    return output


def center_and_band(values: list[list[float]], log: bool = False,
                    bounds: tuple[float | None, float | None] = (None, None)) -> tuple[list, list, list]:
    """Per position of `values` (each inner list a position's value per run): the line and its band's two
    edges. The mean ± std, clipped to `bounds`; for a log axis (`log`, every value positive) the geometric
    mean ×/÷ the geometric std, a band as wide above the line as below it where it is drawn."""
    if log and all(value > 0 for column in values for value in column):
        centers, spreads = mean_and_std([[math.log10(value) for value in column] for column in values])
        return ([10 ** c for c in centers], [10 ** (c - s) for c, s in zip(centers, spreads)],
                [10 ** (c + s) for c, s in zip(centers, spreads)])
    low, high = bounds
    means, stds = mean_and_std(values)

    def clip(value: float) -> float:
        value = value if low is None else max(low, value)
        return value if high is None else min(high, value)

    return means, [clip(m - s) for m, s in zip(means, stds)], [clip(m + s) for m, s in zip(means, stds)]


def band(axis, series: dict[float, list[float]], label: str, scale: float = 1.0,
         bounds: tuple[float | None, float | None] = (None, None), log: bool = False, style: Style | None = None):
    """A line with its band (center_and_band's) from {x: [value per run]}, in `style` (default: the next colour
    of matplotlib's cycle); returns the line."""
    xs = sorted(series)
    centers, lows, highs = center_and_band([[value * scale for value in series[x]] for x in xs], log, bounds)
    looks = line_style(style) if style else {"marker": "o"}
    (line,) = axis.plot(xs, centers, markersize=3, label=label, **looks)
    axis.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.2, linewidth=0)
    return line


# A diagnostic's y axis, short (the panel's title says the rest); a log axis is marked so.
DIAGNOSTIC_AXES = {"loss_ratio": "r(η)", "mode_gap": "gap (points)", "smoothness": "β", "grad_norm": "‖∇L‖"}
DIAGNOSTIC_PLOTS = {
    # name: (kind, x axis: "x" (step size) or "epoch", y label, log x, log y)
    "loss_ratio": ("loss_ratio", "x", "one-step loss ratio r(η) at initialization", True, True),
    "mode_gap": ("mode_gap", "epoch", "val. acc. gap: prediction mode − batch statistics (points)", False, False),
    "smoothness": ("beta_smoothness", "epoch", "effective β-smoothness along the gradient", False, True),
    "grad_norm": ("grad_norm_total", "epoch", "gradient norm (all layers)", False, True),
}


def plot_diagnostic(
    report: Report, diagnostics: dict, epochs: dict, name: str, output: Path, dpi: int = 120
) -> Path:
    kind, axis_field, label, log_x, log_y = DIAGNOSTIC_PLOTS[name]
    groups = list(report.groups)
    check_series(len(groups), report.varying)
    drawn = {id(group): diagnostic_series(group, diagnostics, epochs, kind, axis_field) for group in groups}
    if not any(drawn.values()):
        raise UsageError(f"no stored {name} diagnostics among these runs; they are recorded by training with "
                         "--diagnostics, e.g.: bnrun train --arch mlp --bn pre,post --seeds 3 --diagnostics")
    archs = list(dict.fromkeys(g.value("arch") for g in groups))
    figure, axes = plt.subplots(1, len(archs), figsize=(PANEL_WIDTH * len(archs), 4.5), squeeze=False)
    for axis, arch in zip(axes[0], archs):
        in_arch = [g for g in groups if g.value("arch") == arch]
        for group, style in zip(in_arch, group_styles(in_arch)):
            series = drawn[id(group)]
            if not series:
                continue
            band(axis, series, f"{report.label(group)} (n={len(group.runs)})", log=log_y, style=style)
        if name == "loss_ratio":
            axis.axhline(1.0, color="grey", linewidth=0.8, linestyle="--", label="r = 1: the loss unchanged")
        axis.set_ylabel(DIAGNOSTIC_AXES[name] + (" (log)" if log_y else ""))
        if log_x:
            log_scale(axis, x=True)
        if log_y:
            log_scale(axis)
        axis.set_title(f"{arch.upper()}: {label}")
        if axis_field == "x":
            axis.set_xlabel("step size η")
        else:
            epoch_axis(axis)
        axis.grid(alpha=0.3)
        outside_legend(axis)
    spread = "geometric mean ×/÷ geometric std" if log_y else "mean ± std"
    return save(figure, output, dpi, f"batch-norm diagnostics: {spread} over seeds", recipe_line(report.recipe))


def plot_batch_stats(rows: list[tuple[str, dict[int, list[float]], Style]], output: Path, recipe: dict,
                     dpi: int = 120) -> Path:
    """Test accuracy when prediction normalizes with the statistics of batches of each size
    (Wu & Johnson 2021), one line per configuration: rows of (label, {batch size: [acc per run]}, style); `recipe`:
    the options off the default recipe that every row shares (the caption)."""
    check_series(len(rows), [])
    figure, axis = plt.subplots(figsize=(PANEL_WIDTH + 0.5, 4.5))
    for label, series, style in rows:
        band(axis, series, label, scale=100.0, bounds=PERCENT_RANGE, style=style)
    within(axis, PERCENT_RANGE)
    axis.set_xscale("log", base=2)
    sizes = sorted({size for _, series, _ in rows for size in series})
    axis.set_xticks(sizes, [str(size) for size in sizes])  # the sizes evaluated, not 2¹, 2², ...
    axis.minorticks_off()
    axis.set_xlabel("batch size whose statistics normalize the test images")
    axis.set_ylabel("test accuracy (%)")
    axis.grid(alpha=0.3)
    outside_legend(axis)
    return save(figure, output, dpi, "prediction with batch statistics (latest evaluation of each run)",
                recipe_line(recipe))
