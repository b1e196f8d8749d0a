"""Figures, written as PNGs (Agg backend), each a mean line with a ±std band over seeds:
learning curves per epoch; the headline metric against one option (`plot --x lr`); the
batch-norm diagnostics (`plot --diagnostic ...`); accuracy against the statistics batch size."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from bnrun.analysis.diagnostic_summaries import diagnostic_series  # noqa: E402
from bnrun.analysis.grouping import Group  # noqa: E402
from bnrun.analysis.pivots import Pivot  # noqa: E402
from bnrun.analysis.stats import summarize  # noqa: E402
from bnrun.config import impl_label  # noqa: E402
from bnrun.store import EpochRecord  # noqa: E402

PANELS = (("val_acc", "validation accuracy (%)", 100.0), ("train_loss", "training loss", 1.0))


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


def fill_band(axis, xs: list, means: list[float], stds: list[float], line) -> None:
    axis.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                      color=line.get_color(), alpha=0.2)


def plot_learning_curves(
    groups: list[Group], epochs: dict[int, list[EpochRecord]], output: Path, dpi: int = 120
) -> Path:
    archs = list(dict.fromkeys(g.value("arch") for g in groups))
    figure, axes = plt.subplots(len(archs), len(PANELS), figsize=(11, 3.8 * len(archs)), squeeze=False)
    for row, arch in enumerate(archs):
        for column, (field, label, scale) in enumerate(PANELS):
            axis = axes[row][column]
            for group in (g for g in groups if g.value("arch") == arch):
                x, mean, std = curve(group, epochs, field, scale)
                if not x:
                    continue
                (line,) = axis.plot(x, mean, marker="o", markersize=3, label=f"{group.label()} (n={len(group.runs)})")
                fill_band(axis, x, mean, std, line)
            axis.set_title(f"{arch.upper()}: {label}")
            axis.set_xlabel("epoch")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.set_ylabel(label)
            axis.grid(alpha=0.3)
            if field == "train_loss":
                axis.set_yscale("log")
        axes[row][0].legend(fontsize=8, loc="lower right")
    return save(figure, output, dpi, "Fashion-MNIST learning curves: mean ± std over seeds")


def spans_decades(values: list[float]) -> bool:
    positive = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0]
    return len(positive) == len(values) and len(values) > 1 and max(positive) / min(positive) >= 10


def row_label(labels: dict) -> str:
    text = f"bn={labels.get('bn')}"
    if labels.get("bn") != "none" and "bn_impl" in labels:
        text += f" ({impl_label(labels['bn_impl'], labels.get('fused'))})"
    extras = [f"{k}={v}" for k, v in labels.items() if k not in ("arch", "bn", "bn_impl", "fused")]
    return text + (f", {', '.join(extras)}" if extras else "")


def plot_against_option(pivot: Pivot, output: Path, metric_label: str, scale: float, dpi: int = 120) -> Path:
    """The headline metric against one option: a mean line with a ±std band per placement, one panel
    per architecture; an x marks each value where trials diverged, labelled k/n."""
    archs = list(dict.fromkeys(row.labels.get("arch", "all") for row in pivot.rows))
    figure, axes = plt.subplots(1, len(archs), figsize=(6.5 * len(archs), 4.5), squeeze=False)
    for axis, arch in zip(axes[0], archs):
        for row in (r for r in pivot.rows if r.labels.get("arch", "all") == arch):
            points = [(v, c) for v, c in sorted(row.cells.items(), key=lambda item: item[0])]
            done = [
                (v, c.summary.mean * scale, (c.summary.std or 0.0) * scale)
                for v, c in points
                if c.summary.mean is not None
            ]
            line = None
            if done:
                xs, means, stds = zip(*done)
                (line,) = axis.plot(xs, means, marker="o", markersize=4, label=row_label(row.labels))
                fill_band(axis, xs, means, stds, line)
            for value, cell in points:
                if cell.diverged:
                    color = line.get_color() if line is not None else "red"
                    axis.plot(
                        [value],
                        [0.02],
                        marker="x",
                        color=color,
                        markersize=9,
                        mew=2,
                        transform=axis.get_xaxis_transform(),
                        clip_on=False,
                    )
                    axis.annotate(
                        f"{cell.diverged}/{cell.ended}",
                        (value, 0.05),
                        xycoords=("data", "axes fraction"),
                        fontsize=7,
                        color=color,
                        ha="center",
                    )
        if spans_decades(list(pivot.columns)):
            axis.set_xscale("log")
            axis.minorticks_off()  # the grid's own values label the axis, not 3×10¹
        axis.set_xticks(list(pivot.columns), [f"{value:g}" for value in pivot.columns])
        axis.set_title(f"{arch.upper()}: {metric_label} vs {pivot.by} (× = diverged k/n)")
        axis.set_xlabel(pivot.by)
        axis.set_ylabel(metric_label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return save(figure, output, dpi, f"mean ± std over seeds, by {pivot.by}")


def save(figure, output: Path, dpi: int, title: str) -> Path:
    figure.suptitle(title)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=dpi)
    plt.close(figure)
    return output


def band(axis, series: dict[float, list[float]], label: str, scale: float = 1.0):
    """A mean line with a ±std band from {x: [value per run]}; returns the line."""
    xs = sorted(series)
    means, stds = mean_and_std([[value * scale for value in series[x]] for x in xs])
    (line,) = axis.plot(xs, means, marker="o", markersize=3, label=label)
    fill_band(axis, xs, means, stds, line)
    return line


DIAGNOSTIC_PLOTS = {
    # name: (kind, x axis: "x" (step size) or "epoch", y label, log x, log y)
    "loss_ratio": ("loss_ratio", "x", "one-step loss ratio r(η) at initialization", True, True),
    "mode_gap": ("mode_gap", "epoch", "val. acc. gap: prediction mode − batch statistics (points)", False, False),
    "smoothness": ("beta_smoothness", "epoch", "effective β-smoothness along the gradient", False, True),
    "grad_norm": ("grad_norm_total", "epoch", "gradient norm (all layers)", False, True),
}


def plot_diagnostic(
    groups: list[Group], diagnostics: dict, epochs: dict, name: str, output: Path, dpi: int = 120
) -> Path:
    kind, axis_field, label, log_x, log_y = DIAGNOSTIC_PLOTS[name]
    archs = list(dict.fromkeys(g.value("arch") for g in groups))
    figure, axes = plt.subplots(1, len(archs), figsize=(6.5 * len(archs), 4.5), squeeze=False)
    for axis, arch in zip(axes[0], archs):
        for group in (g for g in groups if g.value("arch") == arch):
            series = diagnostic_series(group, diagnostics, epochs, kind, axis_field)
            if not series:
                continue
            band(axis, series, f"{group.label()} (n={len(group.runs)})")
        if name == "loss_ratio":
            axis.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        axis.set_xscale("log" if log_x else "linear")
        axis.set_yscale("log" if log_y else "linear")
        axis.set_title(f"{arch.upper()}: {label}")
        axis.set_xlabel("step size η" if axis_field == "x" else "epoch")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return save(figure, output, dpi, "batch-norm diagnostics: mean ± std over seeds")


def plot_batch_stats(rows: list[tuple[str, dict[int, list[float]]]], output: Path, dpi: int = 120) -> Path:
    """Test accuracy when prediction normalizes with the statistics of batches of each size
    (Wu & Johnson 2021), one line per configuration: rows of (label, {batch size: [acc per run]})."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for label, series in rows:
        band(axis, series, label, scale=100.0)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("batch size whose statistics normalize the test images")
    axis.set_ylabel("test accuracy (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save(figure, output, dpi, "prediction with batch statistics (latest evaluation of each run)")
