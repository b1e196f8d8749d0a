"""The report and the pivot as rich tables for the terminal (the `table` format)."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from bnrun.analysis import texts
from bnrun.analysis.diagnostic_summaries import DIAGNOSTIC_SUMMARIES
from bnrun.analysis.grouping import Comparison, Report
from bnrun.analysis.pivots import Pivot
from bnrun.analysis.stats import MIN_TRIALS


def table(title: str, header: list[str], left: tuple[str, ...]) -> Table:
    """A table whose `left` columns are labels (left-aligned) and the rest numbers."""
    result = Table(title=title)
    for name in header:
        result.add_column(name, justify="left" if name in left else "right")
    return result


def with_notes(body: Table, notes: list[str], comparisons: tuple[Comparison, ...], *extra: Table) -> Group:
    """The table, its footnotes (dim), the paired comparisons, then any further tables."""
    lines = [Text(texts.comparisons_heading(comparisons), style="bold")]
    compared = texts.comparison_lines(comparisons)
    lines += [Text("  " + line) for line in compared] or [Text("  none (need matching groups)")]
    return Group(body, *(Text(line, style="dim") for line in notes), *lines, *extra)


def report_table(report: Report) -> Group:
    body = table("bnrun report", texts.header_names(report), texts.LABEL_COLUMNS)
    for group in report.groups:
        values = texts.row_values(report, group)
        headline = len(values) - len(texts.columns(report))
        if texts.is_best(report, group):
            values[headline] = f"[bold green]{values[headline]}[/]"
        if len(group.runs) < MIN_TRIALS:
            values[headline - 1] = f"[yellow]{values[headline - 1]}[/]"
        body.add_row(*values)
    extra = [diagnostics_table(report)] if report.diagnostics else []
    return with_notes(body, texts.footnotes(report), report.comparisons, *extra)


def diagnostics_table(report: Report) -> Table:
    header = ["group", *DIAGNOSTIC_SUMMARIES.values()]
    body = table("diagnostics (runs trained with --diagnostics; mean ± std over seeds)", header, ("group",))
    for row in texts.diagnostic_rows(report):
        body.add_row(*row)
    return body


def pivot_table(pivot: Pivot) -> Group:
    body = table(f"bnrun report by {pivot.by}", texts.pivot_header(pivot), pivot.row_fields)
    for row in pivot.rows:
        cells = [f"[bold green]{c}[/]" if v == row.best else (f"[magenta]{c}[/]" if "diverged" in c else c)
                 for v, c in zip(pivot.columns, texts.pivot_cells(pivot, row))]
        body.add_row(*texts.pivot_label_values(pivot, row), *cells)
    return with_notes(body, texts.pivot_notes(pivot), pivot.comparisons)
