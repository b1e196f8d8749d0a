"""The report and the pivot as Markdown: a table, then footnotes and comparisons as a list."""

from __future__ import annotations

from bnrun.analysis import texts
from bnrun.analysis.diagnostic_summaries import DIAGNOSTIC_SUMMARIES
from bnrun.analysis.grouping import Comparison, Report
from bnrun.analysis.pivots import Pivot


def table_lines(header: list[str], left: int, rows: list[list[str]]) -> list[str]:
    """A Markdown table whose first `left` columns are left-aligned, the rest right-aligned."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|",
    ]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def notes_list(notes: list[str], comparisons: tuple[Comparison, ...]) -> list[str]:
    lines = notes + [texts.comparisons_heading(comparisons)] + texts.comparison_lines(comparisons)
    return [f"- {line}" for line in lines]


def bold_best(values: list[str], index: int, best: bool) -> list[str]:
    return values[:index] + [f"**{values[index]}**"] + values[index + 1 :] if best else values


def report_markdown(report: Report) -> str:
    rows = []
    for group in report.groups:
        values = texts.row_values(report, group)
        rows.append(bold_best(values, len(values) - len(texts.columns(report)), texts.is_best(report, group)))
    lines = table_lines(texts.header_names(report), 3, rows)
    return (
        "\n".join(lines + [""] + notes_list(texts.footnotes(report), report.comparisons) + diagnostics_markdown(report))
        + "\n"
    )


def diagnostics_markdown(report: Report) -> list[str]:
    if not report.diagnostics:
        return []
    header = ["group", *DIAGNOSTIC_SUMMARIES.values()]
    return ["", "Diagnostics (mean ± std over seeds):", ""] + table_lines(header, 1, texts.diagnostic_rows(report))


def pivot_markdown(pivot: Pivot) -> str:
    rows = []
    for row in pivot.rows:
        cells = [f"**{c}**" if v == row.best else c for v, c in zip(pivot.columns, texts.pivot_cells(pivot, row))]
        rows.append(texts.pivot_label_values(pivot, row) + cells)
    lines = table_lines(texts.pivot_header(pivot), len(pivot.row_fields), rows)
    return "\n".join(lines + [""] + notes_list(texts.pivot_notes(pivot), pivot.comparisons)) + "\n"
