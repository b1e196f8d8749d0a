"""The report and the pivot as LaTeX tables (booktabs), alone or as a compilable document."""

from __future__ import annotations

from bnrun.analysis import texts
from bnrun.analysis.grouping import Report
from bnrun.analysis.metrics import METRICS
from bnrun.analysis.pivots import Cell, Pivot
from bnrun.analysis.stats import Summary

LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in text).replace("−", "-").replace("±", r"$\pm$")


def math_cell(value: str, bold: bool) -> str:
    return f"$\\mathbf{{{value}}}$" if bold else f"${value}$"


def latex_table(caption: str, label: str, spec: str, header: list[str], body: list[str], standalone: bool) -> str:
    """A booktabs table of already escaped header cells and body lines; `standalone` wraps it in a
    complete compilable document."""
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}", rf"\label{{{label}}}",
             r"\begin{tabular}{" + spec + "}", r"\toprule", " & ".join(header) + r" \\", r"\midrule",
             *body, r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    text = "\n".join(lines) + "\n"
    if not standalone:
        return text
    return ("\\documentclass{article}\n\\usepackage[margin=1.5cm,landscape]{geometry}\n\\usepackage{booktabs}\n"
            "\\usepackage[utf8]{inputenc}\n\\begin{document}\n" + text + "\\end{document}\n")


def summary_cell(summary: Summary, metric: str, bold: bool) -> str:
    text = texts.summary_text(summary, metric, pm="\\pm")
    return "--" if text is None else math_cell(text, bold)


def report_latex(report: Report, standalone: bool = False) -> str:
    cols = texts.columns(report)
    ns = sorted({len(g.runs) for g in report.groups})
    n_text = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"
    header = ["Arch", "BN placement", "BN impl.", *report.varying, "Seeds", *(METRICS[c] for c in cols)]
    caption = (
        rf"Fashion-MNIST: mean $\pm$ sample std over seeds ({latex_escape(n_text)} completed trials per row); "
        rf"headline metric: {latex_escape(METRICS[report.metric])}, accuracies in \%. Best mean per "
        "architecture in bold."
    )
    body, previous_arch = [], None
    for group in report.groups:
        if previous_arch is not None and group.value("arch") != previous_arch:
            body.append(r"\midrule")
        previous_arch = group.value("arch")
        cells = [
            group.value("arch").upper(),
            texts.PLACEMENT_NAMES.get(group.value("bn"), group.value("bn")),
            texts.impl_name(group),
            *(str(group.value(v)) for v in report.varying),
            texts.seeds_cell(group),
        ]
        cells = [latex_escape(c) for c in cells]
        cells += [summary_cell(group.stats[c], c, texts.is_best(report, group) and c == report.metric) for c in cols]
        body.append(" & ".join(cells) + r" \\")
    spec = "lll" + "l" * len(report.varying) + "r" + "r" * len(cols)
    return latex_table(caption, "tab:bnrun", spec, [latex_escape(h) for h in header], body, standalone)


def pivot_latex(pivot: Pivot, standalone: bool = False) -> str:
    caption = (
        rf"Fashion-MNIST: {latex_escape(METRICS[pivot.metric])} by {latex_escape(pivot.by)}, mean $\pm$ sample std "
        r"over seeds of the completed trials; diverged $k/n$: $k$ of $n$ trials diverged. Best per row in bold."
    )
    label = "tab:bnrun-by-" + latex_escape(pivot.by).replace("\\_", "-")
    body = []
    for row in pivot.rows:
        cells = [pivot_cell(row.cells.get(value), value == row.best, pivot.metric) for value in pivot.columns]
        body.append(" & ".join([latex_escape(v) for v in texts.pivot_label_values(pivot, row)] + cells) + r" \\")
    spec = "l" * len(pivot.row_fields) + "r" * len(pivot.columns)
    return latex_table(caption, label, spec, [latex_escape(h) for h in texts.pivot_header(pivot)], body, standalone)


def pivot_cell(cell: Cell | None, best: bool, metric: str) -> str:
    if cell is None:
        return ""
    value = cell.value_text(metric, pm="\\pm")
    parts = [math_cell(value, best)] if value else []
    parts += [latex_escape(cell.flag_text())] if cell.diverged else []
    return "; ".join(parts) or "--"
