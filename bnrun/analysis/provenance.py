"""A figure's provenance: the `bnrun plot` command that made it and a SHA-256 of the data it draws,
written into a PNG as two text chunks, `bnrun:command` and `bnrun:data-sha256`.

The data are read back from the figure's own artists when it is saved: every line's label, marker,
x and y values (means, seeds, the marks below a panel), every band's polygon (mean ± std, as clipped),
every annotation's text and position (the k/n of a mark, n) and every legend entry. So the digest
covers exactly what is drawn, with no second computation of it that could drift; titles, axis
labels, styling and pixels are not part of it. Values are rounded to 8 significant digits, below
anything a figure can show, so that the last bit of a float does not change the digest.

The command comes from the caller (`made_by`, set by the CLI around the plotting call): the plotting
functions need not know it."""

from __future__ import annotations

import hashlib
import json
import math
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

COMMAND = "bnrun:command"
DIGEST = "bnrun:data-sha256"
SIGNIFICANT = 8

_command: ContextVar[str | None] = ContextVar("bnrun_figure_command", default=None)


@contextmanager
def made_by(command: str | None):
    """Figures saved inside this block record `command` (the `bnrun plot ...` line that made them)."""
    token = _command.set(command)
    try:
        yield
    finally:
        _command.reset(token)


def number(value) -> float | str:
    value = float(value)
    return float(f"{value:.{SIGNIFICANT}g}") if math.isfinite(value) else str(value)


def numbers(values) -> list:
    return [number(v) for v in values]


def line_data(line) -> dict:
    label = line.get_label()
    return {
        "label": None if label.startswith("_") else label,
        "marker": str(line.get_marker()),
        "linestyle": str(line.get_linestyle()),
        "x": numbers(line.get_xdata()),
        "y": numbers(line.get_ydata()),
    }


def collection_data(collection) -> list[list[list]]:
    """A band (fill_between): the vertices of each of its polygons."""
    return [[numbers(vertex) for vertex in path.vertices] for path in collection.get_paths()]


def axis_data(axis) -> dict:
    legend = axis.get_legend()
    return {
        "lines": [line_data(line) for line in axis.get_lines()],
        "bands": [collection_data(c) for c in axis.collections],
        "annotations": [{"text": t.get_text(), "at": numbers(getattr(t, "xy", t.get_position()))} for t in axis.texts],
        "legend": [t.get_text() for t in legend.get_texts()] if legend is not None else [],
    }


def plotted_data(figure) -> list[dict]:
    """What the figure draws, panel by panel, as plain values."""
    return [axis_data(axis) for axis in figure.axes]


def canonical_json(figure) -> str:
    return json.dumps(plotted_data(figure), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def data_digest(figure) -> str:
    return hashlib.sha256(canonical_json(figure).encode()).hexdigest()


def metadata(figure, output: Path) -> dict[str, str]:
    """savefig's metadata: the provenance chunks for a PNG (PDF and SVG take fixed keys only)."""
    if Path(output).suffix.lower() != ".png":
        return {}
    chunks = {DIGEST: data_digest(figure)}
    if _command.get():
        chunks[COMMAND] = _command.get()
    return chunks


def read(path: Path) -> dict[str, str]:
    """The provenance chunks a PNG carries ({} when it has none)."""
    from PIL import Image

    with Image.open(path) as image:
        text = getattr(image, "text", {}) or {}
    return {key: value for key, value in text.items() if key in (COMMAND, DIGEST)}
