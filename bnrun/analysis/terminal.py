"""The report and the pivot as rich tables for the terminal (the `table` format), made to fit the
console's width: numbers never wrap, labels and headers fold, what every row shares is a caption,
and the secondary metrics and the diagnostics wait for --wide."""

from __future__ import annotations

import textwrap

from rich import box
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bnrun.analysis import texts
from bnrun.analysis.diagnostic_summaries import DIAGNOSTIC_SUMMARIES
from bnrun.analysis.grouping import Comparison, Report
from bnrun.analysis.pivots import Pivot
from bnrun.analysis.stats import MIN_TRIALS
from bnrun.store import RunStatus


def table(title: str, header: list[str], left: tuple[str, ...], rows: list[list[str]]) -> Table:
    """A table of rows (rich markup allowed) whose `left` columns are labels (left-aligned, folding) and the
    rest numbers: right-aligned and never wrapped, under a header folded to the widest number."""
    result = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for index, name in enumerate(header):
        if name in left:
            result.add_column(name, justify="left", overflow="fold")
        else:
            widest = max((Text.from_markup(row[index]).cell_len for row in rows), default=1)
            folded = "\n".join(textwrap.wrap(name, max(widest, *(len(word) for word in name.split()))))
            result.add_column(folded, justify="right", no_wrap=True)
    for row in rows:
        result.add_row(*row)
    return result


class ColumnChunks:
    """A table whose value columns are spread over as many tables as the console's width needs, each
    repeating the `labels` leading columns: numbers are never cut, however many columns there are."""

    GAP = 3  # the space rich's table puts between two columns

    def __init__(self, title: str, header: list[str], labels: int, rows: list[list[str]]) -> None:
        self.title, self.header, self.labels, self.rows = title, header, labels, rows

    def width(self, index: int) -> int:
        cells = [Text.from_markup(row[index]).cell_len for row in self.rows]
        return max([*cells, *(len(word) for word in self.header[index].split())]) + self.GAP

    def chunks(self, room: int) -> list[list[int]]:
        room -= sum(self.width(i) for i in range(self.labels))
        chunks: list[list[int]] = [[]]
        for index in range(self.labels, len(self.header)):
            used = sum(self.width(i) for i in chunks[-1])
            if chunks[-1] and used + self.width(index) > room:
                chunks.append([])
            chunks[-1].append(index)
        return chunks

    def __rich_console__(self, console, options):
        chunks = self.chunks(options.max_width)
        left = tuple(self.header[: self.labels])
        for number, chunk in enumerate(chunks, 1):
            columns = list(range(self.labels)) + chunk
            title = self.title + (f" ({number}/{len(chunks)})" if len(chunks) > 1 else "")
            rows = [[row[i] for i in columns] for row in self.rows]
            yield table(title, [self.header[i] for i in columns], left, rows)


def with_notes(body, notes: list[str], comparisons: tuple[Comparison, ...], *extra: Table) -> Group:
    """The table, its footnotes (dim), the paired comparisons, then any further tables."""
    lines = [Text(texts.comparisons_heading(comparisons), style="bold")]
    compared = texts.comparison_lines(comparisons)
    lines += [Text("  " + line) for line in compared] or [Text("  none (need matching groups)")]
    return Group(body, *(Text(line, style="dim") for line in notes), *lines, *extra)


def report_table(report: Report, wide: bool = False) -> Group:
    rows = []
    for group in report.groups:
        values = [escape(value) for value in texts.row_values(report, group, wide)]
        headline = len(values) - len(texts.columns(report, wide))
        if texts.is_best(report, group):
            values[headline] = f"[bold green]{values[headline]}[/]"
        if len(group.runs) < MIN_TRIALS:
            values[headline - 1] = f"[yellow]{values[headline - 1]}[/]"
        rows.append(values)
    body = table("bnrun report", texts.header_names(report, wide), texts.LABEL_COLUMNS + report.varying, rows)
    extra = [diagnostics_table(report)] if report.diagnostics and wide else []
    return with_notes(body, texts.footnotes(report) + wide_note(report, wide), report.comparisons, *extra)


def wide_note(report: Report, wide: bool) -> list[str]:
    hidden = [] if wide else texts.hidden_columns(report) + (["the diagnostics"] if report.diagnostics else [])
    return [f"--wide adds {', '.join(hidden)}"] if hidden else []


def diagnostics_table(report: Report) -> Table:
    header = ["group", *DIAGNOSTIC_SUMMARIES.values()]
    rows = [[escape(cell) for cell in row] for row in texts.diagnostic_rows(report)]
    return table("diagnostics (runs trained with --diagnostics; mean ± std over seeds)", header, ("group",), rows)


def pivot_table(pivot: Pivot) -> Group:
    rows = []
    for row in pivot.rows:
        cells = [f"[bold green]{c}[/]" if v == row.best else (f"[magenta]{c}[/]" if RunStatus.DIVERGED in c else c)
                 for v, c in zip(pivot.columns, texts.pivot_cells(pivot, row))]
        rows.append([escape(str(v)) for v in texts.pivot_label_values(pivot, row)] + cells)
    body = ColumnChunks(f"bnrun report by {pivot.by}", texts.pivot_header(pivot), len(pivot.row_fields), rows)
    return with_notes(body, texts.pivot_notes(pivot), pivot.comparisons)
