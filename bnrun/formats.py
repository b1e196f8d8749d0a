"""A `Report` rendered as a rich table, LaTeX (booktabs), Markdown, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json

from rich.console import Group as RichGroup
from rich.table import Table
from rich.text import Text

from bnrun.report import DIAGNOSTIC_SUMMARIES, METRICS, MIN_TRIALS, PERCENT_METRICS, Group, Pivot, PivotRow, Report
from bnrun.stats import Summary

FORMATS = ("table", "latex", "markdown", "csv", "json")
COLUMNS = ("test_acc_population", "test_acc_running", "best_val_acc", "train_loss", "seconds_per_epoch")
PLACEMENT_NAMES = {"pre": "pre: g(BN(f(x)))", "post": "post: BN(g(f(x)))", "none": "none"}


def columns(report: Report) -> tuple[str, ...]:
    return (report.metric,) + tuple(c for c in COLUMNS if c != report.metric)


def scaled_pair(mean: float | None, std: float | None, metric: str) -> tuple[float | None, float | None]:
    """Accuracies as percentages; other metrics unchanged."""
    factor = 100.0 if metric in PERCENT_METRICS else 1.0
    return (None if mean is None else mean * factor), (None if std is None else std * factor)


def scaled(summary: Summary, metric: str) -> tuple[float | None, float | None]:
    return scaled_pair(summary.mean, summary.std, metric)


def digits(metric: str) -> int:
    return 1 if metric == "seconds_per_epoch" else (3 if metric == "train_loss" else 2)


def plain_cell(summary: Summary, metric: str, pm: str = "±") -> str:
    mean, std = scaled(summary, metric)
    if mean is None:
        return "—"
    d = digits(metric)
    return f"{mean:.{d}f} {pm} {std:.{d}f}" if std is not None else f"{mean:.{d}f}"


def seeds_cell(report: Report, group: Group) -> str:
    text = f"{len(group.runs)}/{group.expected_seeds}"
    return text + (f" (+{group.in_progress} running)" if group.in_progress else "")


def impl_name(group: Group) -> str:
    if group.value("bn") == "none":
        return "—"
    return group.value("bn_impl") + ("+fused" if group.value("fused") else "")


def header_names(report: Report) -> list[str]:
    return ["arch", "BN", "impl", *report.varying, "seeds", *(METRICS[c] for c in columns(report))]


def row_values(report: Report, group: Group, pm: str = "±") -> list[str]:
    return [group.value("arch"), group.value("bn"), impl_name(group), *(str(group.value(v)) for v in report.varying),
            seeds_cell(report, group), *(plain_cell(group.stats[c], c, pm) for c in columns(report))]


def footnotes(report: Report) -> list[str]:
    notes = [f"mean ± sample std (n−1) over seeds; headline: {METRICS[report.metric]}"]
    if report.excluded:
        notes.append("left out (not completed): " + ", ".join(f"{n} {status}" for status, n in sorted(report.excluded.items())))
    if report.repeats:
        notes.append(f"runs {', '.join(map(str, report.repeats))} repeat a (configuration, seed) that a later run holds: "
                     "each seed is counted once, by its latest run")
    small = [g.label() for g in report.groups if len(g.runs) < MIN_TRIALS]
    if small:
        notes.append(f"fewer than {MIN_TRIALS} completed trials: " + "; ".join(small))
    return notes


def comparison_lines(comparisons) -> list[str]:
    lines = []
    for c in comparisons:
        mean, std = scaled_pair(c.test.mean_diff, c.test.std_diff, c.metric)
        if mean is None:
            continue
        spread = f" ± {std:.2f}" if std is not None else ""
        setting = f" at {c.setting}" if c.setting else ""
        lines.append(f"{c.a} − {c.b}{setting}: {mean:+.2f}{spread}{interval_text(c)} ({METRICS[c.metric]}, paired by seed; {c.test.verdict()})")
    return lines


def comparisons_heading(comparisons) -> str:
    return (f"paired comparisons (same seed = same initial weights and batch order; 95% CI of the mean difference; "
            f"p-values Holm–Bonferroni corrected over all {len(comparisons)} comparisons):")


def rich_comparisons(comparisons) -> list[Text]:
    lines = [Text(comparisons_heading(comparisons), style="bold")]
    return lines + ([Text("  " + line) for line in comparison_lines(comparisons)] or [Text("  none (need matching groups)")])


def interval_text(c) -> str:
    low, high = scaled_pair(c.test.ci_low, c.test.ci_high, c.metric)
    return "" if low is None else f", 95% CI [{low:+.2f}, {high:+.2f}]"


def comparison_record(c) -> dict:
    t = c.test
    return {"arch": c.arch, "a": c.a, "b": c.b, "setting": c.setting, "metric": c.metric, "n": t.n, "seeds": list(c.seeds),
            "mean_diff": t.mean_diff, "std_diff": t.std_diff, "ci95_low": t.ci_low, "ci95_high": t.ci_high, "t": t.t,
            "p_value": t.p_value, "p_holm": t.p_holm, "significant_after_holm": t.significant(),
            "too_few_seeds": t.too_few, "verdict": t.verdict()}


# -- table -------------------------------------------------------------------------------------------

def to_rich(report: Report) -> RichGroup:
    table = Table(title="bnrun report")
    for name in header_names(report):
        table.add_column(name, justify="left" if name in ("arch", "BN", "impl") else "right")
    for group in report.groups:
        values = row_values(report, group)
        headline = len(values) - len(columns(report))
        if report.best.get(group.value("arch")) == group.key:
            values[headline] = f"[bold green]{values[headline]}[/]"
        if len(group.runs) < MIN_TRIALS:
            values[headline - 1] = f"[yellow]{values[headline - 1]}[/]"
        table.add_row(*values)
    notes = [Text(line, style="dim") for line in footnotes(report)]
    extra = [diagnostics_table(report)] if report.diagnostics else []
    return RichGroup(table, *notes, *rich_comparisons(report.comparisons), *extra)


def diagnostic_cells(report: Report, group: Group) -> list[str]:
    summaries = report.diagnostics.get(group.key, {})
    cells = []
    for name in DIAGNOSTIC_SUMMARIES:
        s = summaries.get(name)
        cells.append("—" if s is None or s.mean is None else f"{s.mean:.3g}" + ("" if s.std is None else f" ± {s.std:.2g}"))
    return cells


def diagnostics_table(report: Report) -> Table:
    table = Table(title="diagnostics (runs trained with --diagnostics; mean ± std over seeds)")
    table.add_column("group")
    for label in DIAGNOSTIC_SUMMARIES.values():
        table.add_column(label, justify="right")
    for group in report.groups:
        if group.key in report.diagnostics:
            table.add_row(group.label(), *diagnostic_cells(report, group))
    return table


# -- LaTeX --------------------------------------------------------------------------------------------

LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in text).replace("−", "-").replace("±", r"$\pm$")


def latex_cell(summary: Summary, metric: str, bold: bool) -> str:
    mean, std = scaled(summary, metric)
    if mean is None:
        return "--"
    d = digits(metric)
    body = f"{mean:.{d}f} \\pm {std:.{d}f}" if std is not None else f"{mean:.{d}f}"
    return f"$\\mathbf{{{body}}}$" if bold else f"${body}$"


def latex_document(body: str, standalone: bool) -> str:
    """The table alone, or (standalone) a complete compilable document around it."""
    if not standalone:
        return body
    return ("\\documentclass{article}\n\\usepackage[margin=1.5cm,landscape]{geometry}\n\\usepackage{booktabs}\n"
            "\\usepackage[utf8]{inputenc}\n\\begin{document}\n" + body + "\\end{document}\n")


def to_latex(report: Report, standalone: bool = False) -> str:
    cols = columns(report)
    ns = sorted({len(g.runs) for g in report.groups})
    n_text = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"
    header = ["Arch", "BN placement", "BN impl.", *report.varying, "Seeds", *(METRICS[c] for c in cols)]
    lines = [
        r"\begin{table}[t]", r"\centering",
        rf"\caption{{Fashion-MNIST: mean $\pm$ sample std over seeds ({latex_escape(n_text)} completed trials per row); "
        rf"headline metric: {latex_escape(METRICS[report.metric])}, accuracies in \%. Best mean per architecture in bold.}}",
        r"\label{tab:bnrun}",
        r"\begin{tabular}{" + "lll" + "l" * len(report.varying) + "r" + "r" * len(cols) + "}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in header) + r" \\",
        r"\midrule",
    ]
    previous_arch = None
    for group in report.groups:
        if previous_arch is not None and group.value("arch") != previous_arch:
            lines.append(r"\midrule")
        previous_arch = group.value("arch")
        best = report.best.get(group.value("arch")) == group.key
        cells = [group.value("arch").upper(), PLACEMENT_NAMES.get(group.value("bn"), group.value("bn")), impl_name(group),
                 *(str(group.value(v)) for v in report.varying), seeds_cell(report, group)]
        cells = [latex_escape(c) for c in cells]
        cells += [latex_cell(group.stats[c], c, best and c == report.metric) for c in cols]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return latex_document("\n".join(lines) + "\n", standalone)


# -- Markdown, CSV, JSON ----------------------------------------------------------------------------------

def to_markdown(report: Report) -> str:
    header = header_names(report)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|"]
    for group in report.groups:
        values = row_values(report, group)
        if report.best.get(group.value("arch")) == group.key:
            index = len(values) - len(columns(report))
            values[index] = f"**{values[index]}**"
        lines.append("| " + " | ".join(values) + " |")
    extra = [f"- {line}" for line in footnotes(report) + [comparisons_heading(report.comparisons)]
             + comparison_lines(report.comparisons)]
    return "\n".join(lines + [""] + extra + diagnostics_markdown(report)) + "\n"


def diagnostics_markdown(report: Report) -> list[str]:
    if not report.diagnostics:
        return []
    lines = ["", "Diagnostics (mean ± std over seeds):", "",
             "| group | " + " | ".join(DIAGNOSTIC_SUMMARIES.values()) + " |", "|---" + "|---:" * len(DIAGNOSTIC_SUMMARIES) + "|"]
    lines += ["| " + " | ".join([g.label(), *diagnostic_cells(report, g)]) + " |" for g in report.groups if g.key in report.diagnostics]
    return lines


def records(report: Report) -> list[dict]:
    rows = []
    for group in report.groups:
        row = {name: group.value(name) for name in ("arch", "bn", "bn_impl", "fused", *report.varying)}
        row.update(n=len(group.runs), expected_seeds=group.expected_seeds, seeds=list(group.seeds),
                   run_ids=[r.id for r in group.runs], best_in_arch=report.best.get(group.value("arch")) == group.key)
        for metric in METRICS:
            row[f"{metric}_mean"], row[f"{metric}_std"] = group.stats[metric].mean, group.stats[metric].std
        row["per_seed"] = {str(seed): values for seed, values in report.per_seed[group.key].items()}
        for name, summary in report.diagnostics.get(group.key, {}).items():
            row[f"diag_{name}_mean"], row[f"diag_{name}_std"] = summary.mean, summary.std
        rows.append(row)
    return rows


def to_csv(report: Report) -> str:
    """One row per group (row_type "group"), then one per paired comparison (row_type "comparison")."""
    rows = [{"row_type": "group", **row} for row in records(report)]
    rows += [{"row_type": "comparison", **comparison_record(c)} for c in report.comparisons]
    fieldnames = list(dict.fromkeys(key for row in rows for key in row)) or ["row_type"]
    buffer = io.StringIO()
    flat = [{k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in row.items()} for row in rows]
    writer = csv.DictWriter(buffer, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(flat)
    return buffer.getvalue()


def to_json(report: Report) -> str:
    payload = {
        "metric": report.metric,
        "groups": records(report),
        "excluded": report.excluded,
        "repeats_not_counted": list(report.repeats),
        "comparisons": [comparison_record(c) for c in report.comparisons],
        "multiple_comparisons": "Holm–Bonferroni over all comparisons listed",
    }
    return json.dumps(payload, indent=2) + "\n"


def render_text(report: Report, fmt: str, standalone: bool = False) -> str:
    if fmt == "latex":
        return to_latex(report, standalone)
    return {"markdown": to_markdown, "csv": to_csv, "json": to_json}[fmt](report)


# -- pivots (`report --by OPTION`) --------------------------------------------------------------------

def pivot_scale(pivot: Pivot) -> tuple[float, int]:
    return (100.0 if pivot.metric in PERCENT_METRICS else 1.0), digits(pivot.metric)


def pivot_header(pivot: Pivot) -> list[str]:
    return [*pivot.row_fields, *(f"{pivot.by}={value}" for value in pivot.columns)]


def pivot_label_values(pivot: Pivot, row: PivotRow) -> list[str]:
    return [str(row.labels[name]) for name in pivot.row_fields]


def pivot_cells(pivot: Pivot, row: PivotRow, pm: str = "±") -> list[str]:
    scale, d = pivot_scale(pivot)
    return [row.cells[v].text(scale, d, pm) if v in row.cells else "" for v in pivot.columns]


def pivot_notes(pivot: Pivot) -> list[str]:
    return [f"{METRICS[pivot.metric]} by {pivot.by}: mean ± sample std over seeds of the completed trials; "
            f"'diverged k/n': k of the n trials that ran to an outcome diverged (they are not in the mean)"]


def pivot_to_rich(pivot: Pivot) -> RichGroup:
    table = Table(title=f"bnrun report by {pivot.by}")
    for name in pivot_header(pivot):
        table.add_column(name, justify="left" if name in pivot.row_fields else "right")
    for row in pivot.rows:
        cells = pivot_cells(pivot, row)
        cells = [f"[bold green]{c}[/]" if v == row.best else (f"[magenta]{c}[/]" if "diverged" in c else c)
                 for v, c in zip(pivot.columns, cells)]
        table.add_row(*pivot_label_values(pivot, row), *cells)
    notes = [Text(line, style="dim") for line in pivot_notes(pivot)]
    return RichGroup(table, *notes, *rich_comparisons(pivot.comparisons))


def pivot_to_markdown(pivot: Pivot) -> str:
    header = pivot_header(pivot)
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < len(pivot.row_fields) else "---:" for i in range(len(header))) + "|"]
    for row in pivot.rows:
        cells = [f"**{c}**" if v == row.best else c for v, c in zip(pivot.columns, pivot_cells(pivot, row))]
        lines.append("| " + " | ".join(pivot_label_values(pivot, row) + cells) + " |")
    extra = [f"- {line}" for line in pivot_notes(pivot) + [comparisons_heading(pivot.comparisons)]
             + comparison_lines(pivot.comparisons)]
    return "\n".join(lines + [""] + extra) + "\n"


def pivot_to_latex(pivot: Pivot, standalone: bool = False) -> str:
    header = [latex_escape(h) for h in pivot_header(pivot)]
    lines = [
        r"\begin{table}[t]", r"\centering",
        rf"\caption{{Fashion-MNIST: {latex_escape(METRICS[pivot.metric])} by {latex_escape(pivot.by)}, mean $\pm$ sample std "
        r"over seeds of the completed trials; diverged $k/n$: $k$ of $n$ trials diverged. Best per row in bold.}",
        r"\label{tab:bnrun-by-" + latex_escape(pivot.by).replace("\\_", "-") + "}",
        r"\begin{tabular}{" + "l" * len(pivot.row_fields) + "r" * len(pivot.columns) + "}",
        r"\toprule", " & ".join(header) + r" \\", r"\midrule",
    ]
    for row in pivot.rows:
        cells = [latex_pivot_cell(row.cells.get(value), value == row.best, pivot) for value in pivot.columns]
        lines.append(" & ".join([latex_escape(v) for v in pivot_label_values(pivot, row)] + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return latex_document("\n".join(lines) + "\n", standalone)


def latex_pivot_cell(cell, best: bool, pivot: Pivot) -> str:
    if cell is None:
        return ""
    scale, d = pivot_scale(pivot)
    value = cell.value_text(scale, d, pm="\\pm")
    parts = [(f"$\\mathbf{{{value}}}$" if best else f"${value}$")] if value else []
    parts += [latex_escape(cell.flag_text())] if cell.diverged else []
    return "; ".join(parts) or "--"


def pivot_records(pivot: Pivot) -> list[dict]:
    rows = []
    for row in pivot.rows:
        for value, cell in row.cells.items():
            rows.append({**row.labels, pivot.by: value, "n": cell.summary.n, "mean": cell.summary.mean,
                         "std": cell.summary.std, "diverged": cell.diverged, "ended": cell.ended,
                         "run_ids": list(cell.run_ids), "best_in_row": value == row.best})
    return rows


def pivot_to_csv(pivot: Pivot) -> str:
    rows = [{"row_type": "cell", **row} for row in pivot_records(pivot)]
    rows += [{"row_type": "comparison", **comparison_record(c)} for c in pivot.comparisons]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for row in rows for k in row)) or ["row_type"])
    writer.writeheader()
    writer.writerows({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def pivot_to_json(pivot: Pivot) -> str:
    payload = {"by": pivot.by, "metric": pivot.metric, "columns": list(pivot.columns), "cells": pivot_records(pivot),
               "comparisons": [comparison_record(c) for c in pivot.comparisons],
               "multiple_comparisons": "Holm–Bonferroni over all comparisons listed"}
    return json.dumps(payload, indent=2) + "\n"


def render_pivot(pivot: Pivot, fmt: str, standalone: bool = False):
    if fmt == "table":
        return pivot_to_rich(pivot)
    if fmt == "latex":
        return pivot_to_latex(pivot, standalone)
    return {"markdown": pivot_to_markdown, "csv": pivot_to_csv, "json": pivot_to_json}[fmt](pivot)
