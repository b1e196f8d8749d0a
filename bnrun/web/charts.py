"""The pages' figures (`svg.Figure`s, drawn on the server): learning curves per architecture, mean with a ±std
band over seeds; the batch-norm diagnostics per group and per run; the metric against a pivot's option
(sensitivity) and each trial of the grid as a point that opens its run. The numbers come from the analysis layer
(`curve`, `diagnostic_series`, `run_diagnostic`, the pivot's cells); nothing is recomputed here.

One visual grammar everywhere a group is drawn, the PNGs' too (analysis/styles.py): the hue is the BN placement, the
dash the implementation; train and validation are separate panels; a comparison of runs gives each run its own hue."""

from __future__ import annotations

from bnrun.analysis.diagnostic_summaries import diagnostic_series, run_diagnostic
from bnrun.analysis.figures import (
    DIAGNOSTIC_AXES,
    DIAGNOSTIC_PLOTS,
    MAX_SERIES,
    PANELS,
    center_and_band,
    curve,
    row_label,
    spans_decades,
)
from bnrun.analysis.grouping import Report, value_order
from bnrun.analysis.metrics import CHANCE, HIGHER_IS_BETTER, METRICS, at_chance, metric_value, scale
from bnrun.analysis.pivots import Pivot, PivotRow
from bnrun.analysis.stats import MIN_TRIALS
from bnrun.analysis.styles import RUN_COLORS, Style, group_styles, label_styles
from bnrun.analysis.texts import recipe_line
from bnrun.config import option_text
from bnrun.store import DiagnosticRecord, EpochRecord, RunRecord
from bnrun.web.svg import Figure, Line, Mark, Panel, shared_y

PERCENT = (0.0, 100.0)
RUN_WIDTH = 320  # a run's four curve panels in one row at 1400 px
OPTION_WIDTH = 620  # a panel against an option: room for a grid's values and the marks beside each other
# the run page's per-epoch diagnostics: (kind, panel title, y label, log y)
RUN_PANELS = (
    ("mode_gap", "mode gap per epoch", "prediction − batch stats (points)", False),
    ("beta_smoothness", "β-smoothness per epoch", "effective β along ∇L", True),
    ("loss_range", "loss range along ∇L per epoch", "loss range", True),
)
LAYER_KINDS = (("grad_norm", "gradient norm per layer", "‖∇‖ (log)", True),
               ("bn_input_std", "BN input std per layer", "std of the BN input", False))


def band_of(means: list[float], stds: list[float], bounds: tuple) -> tuple[tuple, tuple]:
    low, high = bounds

    def clip(value: float) -> float:
        value = value if low is None else max(low, value)
        return value if high is None else min(high, value)

    return tuple(clip(m - s) for m, s in zip(means, stds)), tuple(clip(m + s) for m, s in zip(means, stds))


def crowded(title: str, count: int, kind: str) -> Figure | None:
    """A figure of more than MAX_SERIES lines in a panel cannot be told apart (`bnrun plot` refuses it): a
    figure without panels that says so and how to narrow the selection; None when `count` fits."""
    if count <= MAX_SERIES:
        return None
    return Figure(title, (), (), kind, f"not drawn: {count} lines would share a panel, at most {MAX_SERIES} can be "
                                      "told apart; narrow the selection (where=OPTION=VALUE, arch, bn)")


def most_per_arch(archs: list) -> int:
    return max((archs.count(arch) for arch in set(archs)), default=0)


def without_arch(label: str, arch: str) -> str:
    return label.removeprefix(f"{arch} ")


# -- the report: learning curves and diagnostics per group --------------------------------------------------------

def group_curves(report: Report, epochs: dict[int, list[EpochRecord]]) -> list[Figure]:
    """Per architecture one figure: a panel per metric of `bnrun plot` (validation accuracy, training loss), a
    mean line with a ±std band per group."""
    too_many = crowded("learning curves", most_per_arch([g.value("arch") for g in report.groups]), "curves")
    if too_many:
        return [too_many]
    figures = []
    for arch in dict.fromkeys(g.value("arch") for g in report.groups):
        groups = [g for g in report.groups if g.value("arch") == arch]
        styles = group_styles(groups)
        labels = [f"{without_arch(report.label(g), arch)} (n={len(g.runs)})" for g in groups]
        panels = []
        for field, y_label, factor in PANELS:
            lines = []
            for group, style, label in zip(groups, styles, labels):
                xs, means, stds = curve(group, epochs, field, factor)
                low, high = band_of(means, stds, PERCENT if factor == 100.0 else (0.0, None))
                lines.append(Line(label, style, tuple(xs), tuple(means), low, high))
            panels.append(Panel(f"{arch.upper()}: {y_label}", "epoch", y_label, tuple(lines), integer_x=True,
                                y_log=field == "train_loss", y_bounds=PERCENT if factor == 100.0 else (None, None)))
        figures.append(Figure(f"{arch.upper()}: learning curves, mean ± std over seeds", tuple(panels),
                              tuple(zip(labels, styles)), "curves", recipe_line(report.recipe)))
    return figures


def group_diagnostics(report: Report, diagnostics: dict, epochs: dict) -> list[Figure]:
    """`bnrun plot --diagnostic`'s figures for the groups whose runs recorded them: one per diagnostic, a panel
    per architecture."""
    if most_per_arch([g.value("arch") for g in report.groups]) > MAX_SERIES:
        return []  # the learning curves say why
    figures = []
    for name, (kind, axis_field, y_label, log_x, log_y) in DIAGNOSTIC_PLOTS.items():
        drawn = [(g, diagnostic_series(g, diagnostics, epochs, kind, axis_field)) for g in report.groups]
        drawn = [(g, series) for g, series in drawn if series]
        if not drawn:
            continue
        styles = dict(zip((id(g) for g, _ in drawn), group_styles([g for g, _ in drawn])))
        panels, legend = [], {}
        for arch in dict.fromkeys(g.value("arch") for g, _ in drawn):
            lines = []
            for group, series in ((g, s) for g, s in drawn if g.value("arch") == arch):
                label = f"{without_arch(report.label(group), arch)}"
                xs = sorted(series)
                centers, low, high = center_and_band([series[x] for x in xs], log_y)
                lines.append(Line(label, styles[id(group)], tuple(xs), tuple(centers), tuple(low), tuple(high)))
                legend.setdefault(label, styles[id(group)])
            panels.append(Panel(f"{arch.upper()}: {name.replace('_', ' ')}", "step size η" if axis_field == "x"
                                else "epoch", DIAGNOSTIC_AXES[name], tuple(lines), x_log=log_x, y_log=log_y,
                                integer_x=axis_field == "epoch", reference_y=1.0 if name == "loss_ratio" else None))
        spread = "geometric mean ×/÷ geometric std" if log_y else "mean ± std"
        figures.append(Figure(f"diagnostic: {y_label}, {spread} over seeds", tuple(panels),
                              tuple(legend.items()), "diagnostic"))
    return figures


# -- one run, or a few compared ----------------------------------------------------------------------------------

RUN_METRICS = (("loss", "cross-entropy", (("train_loss", "train", 1.0), ("val_loss", "validation", 1.0))),
               ("accuracy", "accuracy (%)", (("train_acc", "train", 100.0), ("val_acc", "validation", 100.0))))


def run_curves(series: dict[str, list[EpochRecord]]) -> list[Figure]:
    """Per metric a figure of two panels, train and validation; one hue per labelled run."""
    colors = {label: Style(RUN_COLORS[index % len(RUN_COLORS)]) for index, label in enumerate(series)}
    figures = []
    for title, y_label, fields in RUN_METRICS:
        panels = []
        for field, name, factor in fields:
            lines = tuple(epoch_line(label, colors[label], epochs, field, factor) for label, epochs in series.items())
            panels.append(Panel(f"{title}: {name}", "epoch", y_label, lines, integer_x=True,
                                y_bounds=PERCENT if factor == 100.0 else (0.0, None), width=RUN_WIDTH))
        figures.append(Figure(f"{title} per epoch", tuple(panels), tuple(colors.items()), "curves"))
    return figures


def epoch_line(label: str, style: Style, epochs: list[EpochRecord], field: str, factor: float) -> Line:
    values = tuple(getattr(e, field) * factor for e in epochs)
    tips = tuple(f"{label}, epoch {e.epoch}: {value:.4g}" for e, value in zip(epochs, values))
    return Line(label, style, tuple(e.epoch for e in epochs), values, tips=tips)


def run_diagnostics(records: list[DiagnosticRecord], epochs: list[EpochRecord]) -> list[Figure]:
    """What the run recorded with --diagnostics as figures: r(η) at initialization against η, the per-epoch
    probes (mode gap, β-smoothness, loss range) and the per-layer values (gradient norm, BN input std)."""
    if not records:
        return []
    style = Style(RUN_COLORS[0])
    figures = []
    ratio = run_diagnostic(records, epochs, "loss_ratio", "x")
    if ratio:
        xs = tuple(sorted(ratio))
        panel = Panel("one-step loss ratio at initialization", "step size η", "r(η) = L(w − η∇L) / L(w)",
                      (Line("r(η)", style, xs, tuple(ratio[x] for x in xs)),), x_log=True, y_log=True,
                      reference_y=1.0)
        figures.append(Figure("diagnostic: loss ratio against η (Bjorck et al. 2018); below the dashed line a "
                              "step of η lowers the loss", (panel,), (("r(η)", style),), "diagnostic"))
    panels = []
    for kind, title, y_label, log_y in RUN_PANELS:
        values = run_diagnostic(records, epochs, kind, "epoch")
        if values:
            xs = tuple(sorted(values))
            panels.append(Panel(title, "epoch", y_label, (Line(title, style, xs, tuple(values[x] for x in xs)),),
                                integer_x=True, y_log=log_y, reference_y=0.0 if kind == "mode_gap" else None))
    if panels:
        figures.append(Figure("diagnostic: per-epoch probes (Wu & Johnson 2021; Santurkar et al. 2018)",
                              tuple(panels), (("this run", style),), "diagnostic"))
    figures += [figure for kind in LAYER_KINDS if (figure := layer_figure(records, *kind))]
    return figures


def layer_order(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in name.split(".")]


def layer_figure(records: list[DiagnosticRecord], kind: str, title: str, y_label: str, log_y: bool) -> Figure | None:
    """One line per layer: the value at initialization (epoch 0) and after each epoch."""
    by_layer: dict[str, dict[int, float]] = {}
    for r in records:
        if r.kind == kind and r.value is not None:
            by_layer.setdefault(r.name, {})[r.epoch] = r.value
    if not by_layer:
        return None
    layers = sorted(by_layer, key=layer_order)
    styles = {layer: Style(RUN_COLORS[index % len(RUN_COLORS)], "" if index < len(RUN_COLORS) else "4 2")
              for index, layer in enumerate(layers)}
    lines = tuple(Line(f"layer {layer}", styles[layer], tuple(sorted(by_layer[layer])),
                       tuple(by_layer[layer][e] for e in sorted(by_layer[layer]))) for layer in layers)
    panel = Panel(title, "epoch (0: at initialization)", y_label, lines, integer_x=True, y_log=log_y)
    return Figure(f"diagnostic: {title}", (panel,), tuple((f"layer {layer}", styles[layer]) for layer in layers),
                  "diagnostic")


# -- a pivot: the metric against its option -----------------------------------------------------------------------

def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class ValueAxis:
    """The option's values on the x axis: numbers where every set value is one (log when they span decades; the
    trials that leave it unset are no point), else categories in the pivot's order."""

    def __init__(self, columns: tuple) -> None:
        numbers = [v for v in columns if v is not None]
        self.numeric = bool(numbers) and all(is_number(v) for v in numbers)
        self.values = tuple(numbers) if self.numeric else tuple(columns)
        self.log = self.numeric and spans_decades(list(self.values))

    def x(self, value: object) -> float | None:
        if value not in self.values:
            return None
        return float(value) if self.numeric else float(self.values.index(value))

    def ticks(self) -> tuple[tuple, tuple | None]:
        if self.numeric:
            return tuple(float(v) for v in self.values), None
        names = tuple("—" if v is None else ("yes" if v is True else "no" if v is False else str(v))
                      for v in self.values)
        return tuple(float(i) for i in range(len(self.values))), names

    def name(self, value: object) -> str:
        return f"{value:g}" if is_number(value) else str(value)


def sensitivity(pivot: Pivot, where: str = "", columns: tuple | None = None) -> Figure:
    """As `bnrun plot --x`: per architecture a panel, a mean line per row with a ±std band where at least
    MIN_TRIALS seeds completed; diverged cells an x on the x axis (k/n), cells at chance a triangle there; the y
    range from the trials that trained. `where` names what the panels' trials share beyond the pivot's own;
    `columns`: the x axis's values, where several pivots share it."""
    too_many = pivot_crowded(pivot, "sensitivity")
    if too_many:
        return too_many
    axis = ValueAxis(columns or pivot.columns)
    chance = pivot.metric in HIGHER_IS_BETTER
    factor = scale(pivot.metric)
    ticks, names = axis.ticks()
    panels, legend, kinds = [], {}, set()
    for arch, rows in styled_rows_by_arch(pivot):
        lines, marks, left = [], [], set()
        for row, style in rows:
            label = row_label(row.labels)
            legend.setdefault(label, style)
            lines.append(option_line(row, axis, style, label, pivot.metric, chance))
            for value, cell in row.cells.items():
                for kind, count in cell.marks(chance):
                    kinds.add(kind)
                    if kind == "chance":
                        left.add(axis.name(value))
                    marks.append(Mark(axis.x(value), kind, count, style.color, axis.name(value)))
        note = (f"{pivot.by}={', '.join(sorted(left))}: at chance level ({100 * CHANCE:g} %), a triangle on the x "
                "axis, not a point that would stretch the y axis") if left else ""
        name = str(arch).upper()
        title = f"{name}, {where}" if where else f"{name}: {METRICS[pivot.metric]} by {pivot.by}"
        panels.append(Panel(title, pivot.by,
                            METRICS[pivot.metric], tuple(lines), tuple(m for m in marks if m.x is not None),
                            x_log=axis.log, x_ticks=ticks, x_names=names,
                            y_bounds=PERCENT if factor == 100.0 else (None, None), note=note, width=OPTION_WIDTH))
    return Figure(f"{METRICS[pivot.metric]} by {pivot.by}: mean ± std over seeds (band where n ≥ {MIN_TRIALS})",
                  tuple(panels), tuple(legend.items()), "sensitivity", recipe_line(pivot.held),
                  tuple(kind for kind in ("diverged", "chance") if kind in kinds))


def sensitivity_by(then: str, pivots: list[tuple[object, Pivot]]) -> Figure:
    """The sensitivity to the pivot's option at each value of a second option `then`: a panel per value and
    architecture (small multiples on one x and one y range), one legend for all."""
    columns = tuple(sorted({v for _, pivot in pivots for v in pivot.columns}, key=value_order))
    figures = [sensitivity(pivot, f"{then}={option_text(value)}", columns) for value, pivot in pivots]
    drawn = [figure for figure in figures if figure.panels]
    if not drawn:
        return figures[0] if figures else Figure(f"by {then}", (), (), "sensitivity", f"no trial sets {then}")
    first = pivots[0][1]
    legend = dict(entry for figure in drawn for entry in figure.legend)
    kinds = tuple(kind for kind in ("diverged", "chance") if any(kind in f.marks_legend for f in drawn))
    panels = shared_y(tuple(panel for figure in drawn for panel in figure.panels))
    held = recipe_line({name: value for name, value in first.held.items() if name != then})
    return Figure(f"{METRICS[first.metric]} by {first.by}, a panel per {then}", panels, tuple(legend.items()),
                  "sensitivity", held, kinds)


def pivot_crowded(pivot: Pivot, kind: str) -> Figure | None:
    return crowded(f"{METRICS[pivot.metric]} by {pivot.by}", most_per_arch([r.labels.get("arch") for r in pivot.rows]),
                   kind)


def option_line(row, axis: ValueAxis, style: Style, label: str, metric: str, chance: bool) -> Line:
    """A pivot row's means, its band where n ≥ MIN_TRIALS; cells at chance left to their marks."""
    factor = scale(metric)
    done = [(value, cell) for value, cell in row.cells.items() if axis.x(value) is not None
            and cell.summary.mean is not None and not (chance and at_chance(cell.summary.mean))]
    done.sort(key=lambda pair: axis.x(pair[0]))
    xs = tuple(axis.x(value) for value, _ in done)
    means = [cell.summary.mean * factor for _, cell in done]
    stds = [(cell.summary.std or 0.0) * factor for _, cell in done]
    low, high = band_of(means, stds, PERCENT if factor == 100.0 else (None, None))
    enough = [cell.summary.n >= MIN_TRIALS for _, cell in done]
    low = tuple(v if ok else None for v, ok in zip(low, enough))
    high = tuple(v if ok else None for v, ok in zip(high, enough))
    tips = tuple(f"{label}, {axis.name(value)}: {cell.text(metric)} (n={cell.summary.n})" for value, cell in done)
    return Line(label, style, xs, tuple(means), low, high, tips=tips)


def styled_rows_by_arch(pivot: Pivot) -> list[tuple[str, list[tuple[PivotRow, Style]]]]:
    """The pivot's rows per architecture (a panel each), each with its line's style."""
    result = []
    for arch in dict.fromkeys(row.labels.get("arch", "all") for row in pivot.rows):
        rows = [row for row in pivot.rows if row.labels.get("arch", "all") == arch]
        result.append((arch, list(zip(rows, label_styles([row.labels for row in rows])))))
    return result


def grid(pivot: Pivot, runs: dict[int, RunRecord]) -> Figure:
    """Every trial of the pivot as a point at its option value (rows side by side), linking to its run; trials
    that diverged or ended at chance as marks on the x axis."""
    too_many = pivot_crowded(pivot, "grid")
    if too_many:
        return too_many
    axis = ValueAxis(pivot.columns)
    chance = pivot.metric in HIGHER_IS_BETTER
    factor = scale(pivot.metric)
    ticks, names = axis.ticks()
    panels, legend, kinds = [], {}, set()
    for arch, rows in styled_rows_by_arch(pivot):
        lines, marks = [], []
        for slot, (row, style) in enumerate(rows):
            label = row_label(row.labels)
            dots = Style(style.color, "", style.marker, line=False)
            legend.setdefault(label, dots)
            points, counts = trial_points(row, runs, axis, pivot.metric, factor, chance,
                                          jitter(axis, slot, len(rows)))
            xs, ys, tips, links = zip(*points) if points else ((), (), (), ())
            lines.append(Line(label, dots, xs, ys, tips=tips, links=links, points=True))
            for (value, kind), count in counts.items():
                kinds.add(kind)
                marks.append(Mark(axis.x(value), kind, count, style.color, axis.name(value)))
        panels.append(Panel(f"{str(arch).upper()}: each trial", pivot.by, METRICS[pivot.metric], tuple(lines),
                            tuple(marks), x_log=axis.log, x_ticks=ticks, x_names=names,
                            y_bounds=PERCENT if factor == 100.0 else (None, None), width=OPTION_WIDTH))
    return Figure(f"the grid: {METRICS[pivot.metric]} of each trial by {pivot.by} (a point opens its run)",
                  tuple(panels), tuple(legend.items()), "grid", recipe_line(pivot.held),
                  tuple(kind for kind in ("diverged", "chance") if kind in kinds))


def jitter(axis: ValueAxis, slot: int, slots: int):
    """Rows side by side at one value: a small offset per row (a factor on a log axis), all of them within
    ±0.15 of the gap to the next value."""
    offset = (slot - (slots - 1) / 2) * min(0.06, 0.3 / max(slots, 1))
    if axis.log:
        return lambda x: x * (1 + offset)
    if axis.numeric:
        values = sorted(float(v) for v in axis.values)
        gaps = [b - a for a, b in zip(values, values[1:])] or [1.0]
        return lambda x: x + offset * min(gaps)
    return lambda x: x + offset


def trial_points(row, runs: dict[int, RunRecord], axis: ValueAxis, metric: str, factor: float, chance: bool,
                 shift) -> tuple[list, dict]:
    points, counts = [], {}
    for value, cell in row.cells.items():
        x = axis.x(value)
        if x is None:
            continue
        diverged = at_level = 0
        for run_id in cell.run_ids:
            run = runs.get(run_id)
            result = None if run is None else metric_value(run, metric)
            if run is None or run.status != "completed" or result is None:
                diverged += run is not None and run.status == "diverged"
            elif chance and at_chance(result):
                at_level += 1
            else:
                points.append((shift(x), result * factor, f"run {run_id} (seed {run.seed}): {result * factor:.4g}",
                               f"/runs/{run_id}"))
        if diverged:
            counts[(value, "diverged")] = f"{diverged}/{cell.ended}"
        if at_level:
            counts[(value, "chance")] = f"{at_level}/{cell.ended}"
    return points, counts
