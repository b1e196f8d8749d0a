"""The pages' figures as plotly.js specifications (plain dicts, drawn in the browser by `bnrun.js`):
learning curves per run or per group (mean ± std over seeds), and the headline metric against the
pivot's option. The numbers come from the analysis layer; nothing is recomputed here."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from bnrun.analysis.figures import curve
from bnrun.analysis.grouping import Report
from bnrun.analysis.metrics import METRICS, scaled_pair
from bnrun.analysis.pivots import Pivot
from bnrun.analysis.texts import pivot_label_values
from bnrun.store import EpochRecord

# (title, y label, [(EpochRecord field, series name, scale)])
PANELS = (
    ("loss", "cross-entropy", (("train_loss", "train", 1.0), ("val_loss", "validation", 1.0))),
    ("accuracy", "accuracy (%)", (("train_acc", "train", 100.0), ("val_acc", "validation", 100.0))),
)
LAYOUT = {"margin": {"l": 60, "r": 20, "t": 40, "b": 45}, "height": 360, "legend": {"orientation": "h", "y": -0.2}}


def plotly_js() -> Path:
    """plotly.js as the installed `plotly` wheel ships it (served locally or inlined; never fetched)."""
    return Path(str(files("plotly") / "package_data" / "plotly.min.js"))


def figure(title: str, y_label: str, traces: list[dict], x_label: str = "epoch") -> dict:
    layout = {**LAYOUT, "title": {"text": title}, "xaxis": {"title": {"text": x_label}},
              "yaxis": {"title": {"text": y_label}}}
    return {"data": traces, "layout": layout}


def line(name: str, xs: list, ys: list, dash: str = "solid", errors: list | None = None) -> dict:
    trace = {"type": "scatter", "mode": "lines+markers", "name": name, "x": xs, "y": ys, "line": {"dash": dash}}
    if errors is not None:
        trace["error_y"] = {"type": "data", "array": errors, "visible": True}
    return trace


def run_curves(series: dict[str, list[EpochRecord]]) -> list[dict]:
    """Loss and accuracy per epoch, train solid and validation dashed, one colour per labelled run."""
    figures = []
    for title, y_label, fields in PANELS:
        traces = [
            line(f"{label} {name}", [e.epoch for e in epochs], [getattr(e, field) * scale for e in epochs],
                 "solid" if name == "train" else "dash")
            for label, epochs in series.items()
            for field, name, scale in fields
        ]
        figures.append(figure(title, y_label, traces))
    return figures


def group_curves(report: Report, epochs: dict[int, list[EpochRecord]]) -> list[dict]:
    """Per group of the report, the mean over its seeds per epoch with ±std bars (analysis' `curve`)."""
    figures = []
    for title, y_label, fields in PANELS:
        traces = []
        for group in report.groups:
            for field, name, scale in fields:
                xs, means, stds = curve(group, epochs, field, scale)
                traces.append(line(f"{report.label(group)} {name}", xs, means,
                                   "solid" if name == "train" else "dash", stds))
        figures.append(figure(f"{title}: mean ± std over seeds", y_label, traces))
    return figures


def sensitivity(pivot: Pivot) -> dict:
    """The headline metric against the pivot's option, one line per row, ±std bars."""
    traces = []
    for row in pivot.rows:
        values = [value for value in pivot.columns if value in row.cells]
        pairs = [scaled_pair(row.cells[v].summary.mean, row.cells[v].summary.std, pivot.metric) for v in values]
        name = " ".join(pivot_label_values(pivot, row))  # the table's row labels
        traces.append(line(name, [str(v) for v in values], [m for m, _ in pairs], errors=[s or 0 for _, s in pairs]))
    result = figure(f"{METRICS[pivot.metric]} by {pivot.by}", METRICS[pivot.metric], traces, pivot.by)
    result["layout"]["xaxis"]["type"] = "category"
    return result
