"""A report or a pivot in the format asked for: a rich renderable (`table`) or text."""

from __future__ import annotations

from bnrun.analysis import latex, machine, markdown, terminal
from bnrun.analysis.grouping import Report
from bnrun.analysis.pivots import Pivot

FORMATS = ("table", "latex", "markdown", "csv", "json")


def render(content: Report | Pivot, fmt: str, standalone: bool = False, wide: bool = False):
    """`standalone`: LaTeX as a complete compilable document; `wide`: the terminal table with every metric
    and the diagnostics (the other formats always carry them)."""
    if isinstance(content, Pivot):
        renderers = {"table": terminal.pivot_table, "markdown": markdown.pivot_markdown, "csv": machine.pivot_csv,
                     "json": machine.pivot_json}
        return latex.pivot_latex(content, standalone) if fmt == "latex" else renderers[fmt](content)
    if fmt == "table":
        return terminal.report_table(content, wide)
    renderers = {"markdown": markdown.report_markdown, "csv": machine.report_csv, "json": machine.report_json}
    return latex.report_latex(content, standalone) if fmt == "latex" else renderers[fmt](content)
