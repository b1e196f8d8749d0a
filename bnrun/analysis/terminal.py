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
from bnrun.analysis.metrics import METRICS, digits, scaled_pair, signed
from bnrun.analysis.pivots import Pivot
from bnrun.analysis.stats import MIN_TRIALS, p_text
from bnrun.store import RunStatus


def table(title: str, header: list[str], left: tuple[str, ...], rows: list[list[str]], fold: bool = False) -> Table:
    """A table of rows (rich markup allowed) whose `left` columns are labels (left-aligned, whole on one line, or
    folding at word boundaries with `fold`) and the rest numbers: right-aligned and never wrapped, under a header
    folded to the widest number."""
    result = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for index, name in enumerate(header):
        if name in left:
            result.add_column(name, justify="left", no_wrap=not fold, overflow="fold")
        else:
            widest = max((Text.from_markup(row[index]).cell_len for row in rows), default=1)
            folded = "\n".join(textwrap.wrap(name, max(widest, *(len(word) for word in name.split()))))
            result.add_column(folded, justify="right", no_wrap=True)
    for row in rows:
        result.add_row(*row)
    return result


GAP = 3  # the space rich's table puts between two columns


def column_width(name: str, cells: list[str], label: bool) -> int:
    """A column's width with the gap after it: its widest cell, and its header (a label's whole, a number's
    longest word: table() folds a number's header)."""
    words = [name] if label else name.split()
    return max([*(Text.from_markup(cell).cell_len for cell in cells), *(len(word) for word in words)]) + GAP


def chunked(widths: list[int], room: int) -> list[list[int]]:
    """The indexes of `widths` in consecutive groups, each as wide as fits `room` (at least one per group)."""
    chunks: list[list[int]] = [[]]
    for index, width in enumerate(widths):
        if chunks[-1] and sum(widths[i] for i in chunks[-1]) + width - GAP > room:
            chunks.append([])
        chunks[-1].append(index)
    return chunks


class ColumnChunks:
    """A table whose value columns are spread over as many tables as the console's width needs, each
    repeating the `labels` leading columns whole: no label and no number is ever cut, however many columns
    there are. Where the labels themselves leave no room for a number, they become one column of
    `name=value` words (or the `folded` texts given) that folds at word boundaries, and a line says the width
    that would keep a row on one line."""

    FOLDED = 20  # the room a folded label column keeps at least

    def __init__(self, title: str, header: list[str], labels: int, rows: list[list[str]],
                 folded: list[str] | None = None, fold_first: bool = False) -> None:
        """`fold_first`: where the labels leave room for some numbers but not all, fold the labels rather
        than split the numbers over tables, if that keeps every number in one table."""
        self.title, self.header, self.labels, self.rows, self.fold_first = title, header, labels, rows, fold_first
        self.folded = folded or [", ".join(f"{h}={cell}" for h, cell in zip(header[:labels], row)) if labels > 1
                                 else row[0] for row in rows]

    def widths(self) -> list[int]:
        return [column_width(name, [row[i] for row in self.rows], i < self.labels) for i, name in
                enumerate(self.header)]

    def __rich_console__(self, console, options):
        widths = self.widths()
        labels, values = sum(widths[: self.labels]), widths[self.labels:]
        folding_keeps_one_table = self.FOLDED + GAP + sum(values) - GAP <= options.max_width
        if labels + sum(values) - GAP > options.max_width and self.fold_first and folding_keeps_one_table:
            yield from self.folded_tables(widths, values, options.max_width)
            return
        if labels + max(values, default=GAP) - GAP <= options.max_width:
            yield from self.tables(self.header, self.rows, self.labels, chunked(values, options.max_width - labels))
            return
        yield from self.folded_tables(widths, values, options.max_width)

    def folded_tables(self, widths: list[int], values: list[int], room: int):
        yield Text(f"(labels folded: a line per row needs {sum(widths) - GAP} columns)", style="dim")
        rows = [[label, *row[self.labels:]] for label, row in zip(self.folded, self.rows)]
        chunks = chunked(values, room - self.FOLDED - GAP)
        name = self.header[0] if self.labels == 1 else "group"
        yield from self.tables([name, *self.header[self.labels:]], rows, 1, chunks, fold=True)

    def tables(self, header: list[str], rows: list[list[str]], labels: int, chunks: list[list[int]],
               fold: bool = False):
        """One table per chunk of value columns (indexes counted after the labels), the labels leading each."""
        for number, chunk in enumerate(chunks, 1):
            columns = list(range(labels)) + [labels + i for i in chunk]
            title = self.title + (f" ({number}/{len(chunks)})" if len(chunks) > 1 else "")
            yield table(title, [header[i] for i in columns], tuple(header[:labels]),
                        [[row[i] for i in columns] for row in rows], fold)


def with_notes(body, notes: list[str], comparisons: tuple[Comparison, ...], *extra) -> Group:
    """The table, its footnotes (dim), the paired comparisons, then any further tables."""
    return Group(body, *(Text(line, style="dim") for line in notes), *comparisons_block(comparisons), *extra)


def comparisons_block(comparisons: tuple[Comparison, ...]) -> list:
    """A heading, then one row per paired comparison with a mean difference (the long form is markdown's)."""
    shown = [c for c in comparisons if c.test.mean_diff is not None]
    if not shown:
        return [Text("paired comparisons: none (need matching groups)", style="bold")]
    metric = METRICS[shown[0].metric]
    heading = (f"paired comparisons, a − b in {metric} by seed (same seed = same initial weights and batch order); "
               f"{texts.holm_scope(comparisons)}:")
    header = ["a − b", "mean", "95% CI", "p", "Holm p", "n"]
    rows = comparison_rows(shown)
    if len({c.test.n for c in shown}) == 1 and not shown[0].test.too_few:  # one n: said once, not a column
        heading = heading.removesuffix(":") + f"; n = {shown[0].test.n} pairs each:"
        header, rows = header[:-1], [row[:-1] for row in rows]
    return [Text(heading, style="bold"), ColumnChunks("", header, 1, rows, fold_first=True)]


def comparison_rows(shown: list[Comparison]) -> list[list[str]]:
    """A row per comparison; those made at a setting (a pivot's value, a grid's point) under a line naming it,
    once for the comparisons in a row that share it, rather than at the end of every label."""
    rows, setting = [], None
    for c in shown:
        if c.setting and c.setting != setting:
            rows.append([f"[dim]at {escape(c.setting)}[/]", *[""] * 5])
        setting = c.setting
        rows.append([("  " if c.setting else "") + escape(pair_label(c.a, c.b)), *comparison_cells(c)])
    return rows


def pair_label(a: str, b: str) -> str:
    """'cnn pre − post (custom+fused)' for 'cnn bn=pre (custom+fused)' and 'cnn bn=post (custom+fused)': the
    words both labels share said once, around what differs."""
    words_a, words_b = a.replace("bn=", "").split(), b.replace("bn=", "").split()
    lead = 0
    while lead < min(len(words_a), len(words_b)) - 1 and words_a[lead] == words_b[lead]:
        lead += 1
    trail = 0
    while trail < min(len(words_a), len(words_b)) - lead - 1 and words_a[-1 - trail] == words_b[-1 - trail]:
        trail += 1
    middle = " ".join(words_a[lead:len(words_a) - trail]) + " − " + " ".join(words_b[lead:len(words_b) - trail])
    return " ".join([*words_a[:lead], middle, *words_a[len(words_a) - trail:]])


def comparison_cells(c: Comparison) -> list[str]:
    """The mean difference, its 95% CI, p and Holm's p (bold green where significant), n (yellow when too few)."""
    places = digits(c.metric)
    mean, _ = scaled_pair(c.test.mean_diff, None, c.metric)
    low, high = scaled_pair(c.test.ci_low, c.test.ci_high, c.metric)
    interval = "—" if low is None else f"[{signed(low, places)}, {signed(high, places)}]"
    holm = num(c.test.p_holm)
    return [
        signed(mean, places),
        escape(interval),
        num(c.test.p_value),
        f"[bold green]{holm}[/]" if c.test.significant() else holm,
        f"[yellow]{c.test.n}[/]" if c.test.too_few else str(c.test.n),
    ]


def num(p: float | None) -> str:
    return p_text(p)


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
    labels = len(texts.LABEL_COLUMNS + report.varying)
    folded = [escape(report.label(group)) for group in report.groups]
    body = ColumnChunks("bnrun report", texts.header_names(report, wide), labels, rows, folded)
    extra = [diagnostics_table(report)] if report.diagnostics and wide else []
    return with_notes(body, texts.footnotes(report) + wide_note(report, wide), report.comparisons, *extra)


def wide_note(report: Report, wide: bool) -> list[str]:
    hidden = [] if wide else texts.hidden_columns(report) + (["the diagnostics"] if report.diagnostics else [])
    return [f"--wide adds {', '.join(hidden)}"] if hidden else []


def diagnostics_table(report: Report) -> ColumnChunks:
    header = ["group", *DIAGNOSTIC_SUMMARIES.values()]
    rows = [[escape(cell) for cell in row] for row in texts.diagnostic_rows(report)]
    return ColumnChunks("diagnostics (runs trained with --diagnostics; mean ± std over seeds)", header, 1, rows)


def pivot_table(pivot: Pivot) -> Group:
    rows = []
    for row in pivot.rows:
        cells = [f"[bold green]{c}[/]" if v == row.best else (f"[magenta]{c}[/]" if RunStatus.DIVERGED in c else c)
                 for v, c in zip(pivot.columns, texts.pivot_cells(pivot, row))]
        rows.append([escape(str(v)) for v in texts.pivot_label_values(pivot, row)] + cells)
    body = ColumnChunks(f"bnrun report by {pivot.by}", texts.pivot_header(pivot), len(pivot.row_fields), rows)
    return with_notes(body, texts.pivot_notes(pivot), pivot.comparisons)
