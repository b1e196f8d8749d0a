"""The report and the pivot as LaTeX tables (booktabs), alone or as a compilable document: the
results table, the paired comparisons with their Holm-corrected p-values, and the diagnostics, each
shrunk to the text width when it would overflow it (needs booktabs and graphicx)."""

from __future__ import annotations

from bnrun.analysis import texts
from bnrun.analysis.diagnostic_summaries import DIAGNOSTIC_SUMMARIES
from bnrun.analysis.grouping import Comparison, Report
from bnrun.analysis.metrics import METRICS, scaled_pair
from bnrun.analysis.pivots import Cell, Pivot
from bnrun.analysis.stats import Summary, p_text
from bnrun.config import option_text

LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"$<$", ">": r"$>$", "≥": r"$\geq$", "≤": r"$\leq$", "η": r"$\eta$", "β": r"$\beta$",
                  "∇": r"$\nabla$", "·": r"$\cdot$", "‖": r"$\|$", "−": r"$-$", "±": r"$\pm$", "—": r"\textemdash{}"}


def latex_escape(text: str) -> str:
    """`text` in LaTeX's text mode: its specials escaped, and "--" (an option's dashes, --where) kept as two
    hyphens rather than set as an en dash."""
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in text).replace("--", "-{}-")


def math_cell(value: str, bold: bool) -> str:
    return f"$\\mathbf{{{value}}}$" if bold else f"${value}$"


def stacked(header: str) -> str:
    """An escaped header cell over two lines at its parenthesis: 'test acc.' over '(population stats)'."""
    head, sep, tail = header.partition(" (")
    if not sep:
        return latex_escape(header)
    return r"\begin{tabular}[b]{@{}c@{}}" + latex_escape(head) + r"\\(" + latex_escape(tail) + r"\end{tabular}"


def fitted(tabular: list[str]) -> list[str]:
    """A tabular shrunk to the line width when (and only when) it is wider (graphicx's \\resizebox)."""
    return [r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%", *tabular, "}"]


def latex_table(caption: str, label: str, spec: str, header: list[str], body: list[str], standalone: bool,
                notes: list[str] = (), extra: list[str] = ()) -> str:
    """A booktabs table of already escaped header cells and body lines, with escaped `notes` under it and
    `extra` LaTeX after it; `standalone` wraps it in a complete compilable document."""
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}", rf"\label{{{label}}}",
             *fitted([r"\begin{tabular}{" + spec + "}", r"\toprule", " & ".join(header) + r" \\", r"\midrule",
                      *body, r"\bottomrule", r"\end{tabular}"]),
             *note_lines(notes), r"\end{table}", *extra]
    text = "% needs \\usepackage{booktabs,graphicx}\n" + "\n".join(lines) + "\n"
    if not standalone:
        return text
    return ("\\documentclass{article}\n\\usepackage[margin=1.5cm,landscape]{geometry}\n\\usepackage{booktabs}\n"
            "\\usepackage{graphicx}\n\\usepackage[utf8]{inputenc}\n\\begin{document}\n" + text + "\\end{document}\n")


def note_lines(notes: list[str]) -> list[str]:
    if not notes:
        return []
    return [r"\par\smallskip{\raggedright\footnotesize", *(latex_escape(note) + r"\par" for note in notes), "}"]


def comparisons_table(comparisons: tuple[Comparison, ...], label: str) -> list[str]:
    """The paired comparisons as a second table: difference ± std, 95% CI, n, p and Holm p, the verdict."""
    rows = []
    for c in comparisons:
        mean, std = scaled_pair(c.test.mean_diff, c.test.std_diff, c.metric)
        if mean is None:
            continue
        low, high = scaled_pair(c.test.ci_low, c.test.ci_high, c.metric)
        what = f"{c.a} − {c.b}" + (f" at {c.setting}" if c.setting else "")
        cells = [
            latex_escape(what),
            f"${mean:+.2f}" + ("" if std is None else f" \\pm {std:.2f}") + "$",
            "--" if low is None else f"$[{low:+.2f}, {high:+.2f}]$",
            str(c.test.n),
            p_cell(c.test.p_value),
            p_cell(c.test.p_holm, bold=c.test.significant()),
        ]
        rows.append(" & ".join(cells) + r" \\")
    if not rows:
        return []
    caption = latex_escape(texts.comparisons_heading(comparisons).rstrip(":")) + "; bold: significant after Holm."
    header = ["comparison", "difference", "95\\% CI", "$n$", "$p$", "Holm $p$"]
    return ["", *latex_table(caption, label, "p{0.5\\linewidth}rrrrr", header, rows, False).splitlines()[1:]]


def p_cell(p: float | None, bold: bool = False) -> str:
    return "--" if p is None else math_cell(p_text(p).replace("e-0", "e-"), bold)


def number(value: float | None, bold: bool = False) -> str:
    if value is None:
        return "--"
    return math_cell(f"{value:.3g}".replace("e-0", "e-"), bold)


def diagnostics_table(report: Report) -> list[str]:
    rows = [" & ".join(latex_escape(cell) for cell in row) + r" \\" for row in texts.diagnostic_rows(report)]
    if not rows:
        return []
    header = ["group", *(r"\begin{tabular}[b]{@{}c@{}}" + r"\\".join(latex_escape(part) for part in split_header(name))
                         + r"\end{tabular}" for name in DIAGNOSTIC_SUMMARIES.values())]
    caption = "Batch-norm diagnostics (runs trained with --diagnostics): mean $\\pm$ std over seeds."
    return ["", *latex_table(caption, "tab:bnrun-diagnostics", "l" + "r" * len(DIAGNOSTIC_SUMMARIES), header, rows,
                             False).splitlines()[1:]]


def split_header(name: str) -> list[str]:
    """A long header over lines of about 20 characters, at commas and spaces."""
    import textwrap

    return textwrap.wrap(name, 20)


def summary_cell(summary: Summary, metric: str, bold: bool) -> str:
    text = texts.summary_text(summary, metric, pm="\\pm")
    return "--" if text is None else math_cell(text, bold)


def report_latex(report: Report, standalone: bool = False) -> str:
    cols = texts.columns(report)
    ns = sorted({len(g.runs) for g in report.groups})
    n_text = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"
    header = ["Arch", "BN placement", "BN impl.", *map(latex_escape, report.varying), "Seeds",
              *(stacked(METRICS[c]) for c in cols)]
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
            *(option_text(group.value(v)) for v in report.varying),
            texts.seeds_cell(group),
        ]
        cells = [latex_escape(c) for c in cells]
        cells += [summary_cell(group.stats[c], c, texts.is_best(report, group) and c == report.metric) for c in cols]
        body.append(" & ".join(cells) + r" \\")
    spec = "lll" + "l" * len(report.varying) + "r" + "r" * len(cols)
    notes = [note for note in texts.footnotes(report) if not note.startswith("mean ± sample std")]
    extra = comparisons_table(report.comparisons, "tab:bnrun-comparisons") + diagnostics_table(report)
    return latex_table(caption, "tab:bnrun", spec, header, body, standalone, notes, extra)


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
    extra = comparisons_table(pivot.comparisons, label + "-comparisons")
    return latex_table(caption, label, spec, [latex_escape(h) for h in texts.pivot_header(pivot)], body, standalone,
                       extra=extra)


def pivot_cell(cell: Cell | None, best: bool, metric: str) -> str:
    if cell is None:
        return ""
    value = cell.value_text(metric, pm="\\pm")
    parts = [math_cell(value, best)] if value else []
    parts += [latex_escape(cell.flag_text())] if cell.diverged else []
    return "; ".join(parts) or "--"
