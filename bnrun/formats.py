"""A `Report` rendered as a rich table, LaTeX (booktabs), Markdown, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json

from rich.console import Group as RichGroup
from rich.table import Table
from rich.text import Text

from bnrun.report import METRICS, MIN_TRIALS, PERCENT_METRICS, Group, Report
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
    small = [g.label() for g in report.groups if len(g.runs) < MIN_TRIALS]
    if small:
        notes.append(f"fewer than {MIN_TRIALS} completed trials: " + "; ".join(small))
    return notes


def comparison_lines(report: Report) -> list[str]:
    lines = []
    for c in report.comparisons:
        mean, std = scaled_pair(c.test.mean_diff, c.test.std_diff, c.metric)
        if mean is None:
            continue
        spread = f" ± {std:.2f}" if std is not None else ""
        lines.append(f"{c.a} − {c.b}: {mean:+.2f}{spread} ({METRICS[c.metric]}, paired by seed; {c.test.verdict()})")
    return lines


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
    comparisons = [Text("paired comparisons (same seed = same initial weights and batch order):", style="bold")]
    comparisons += [Text("  " + line) for line in comparison_lines(report)] or [Text("  none (need matching groups)")]
    return RichGroup(table, *notes, *comparisons)


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
    body = "\n".join(lines) + "\n"
    if not standalone:
        return body
    return ("\\documentclass{article}\n\\usepackage[margin=1.5cm,landscape]{geometry}\n\\usepackage{booktabs}\n"
            "\\usepackage[utf8]{inputenc}\n\\begin{document}\n" + body + "\\end{document}\n")


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
    extra = [f"- {line}" for line in footnotes(report) + comparison_lines(report)]
    return "\n".join(lines + [""] + extra) + "\n"


def records(report: Report) -> list[dict]:
    rows = []
    for group in report.groups:
        row = {name: group.value(name) for name in ("arch", "bn", "bn_impl", "fused", *report.varying)}
        row.update(n=len(group.runs), expected_seeds=group.expected_seeds, seeds=list(group.seeds),
                   run_ids=[r.id for r in group.runs], best_in_arch=report.best.get(group.value("arch")) == group.key)
        for metric in METRICS:
            row[f"{metric}_mean"], row[f"{metric}_std"] = group.stats[metric].mean, group.stats[metric].std
        row["per_seed"] = {str(seed): values for seed, values in report.per_seed[group.key].items()}
        rows.append(row)
    return rows


def to_csv(report: Report) -> str:
    rows = records(report)
    buffer = io.StringIO()
    flat = [{k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in row.items()} for row in rows]
    writer = csv.DictWriter(buffer, fieldnames=list(flat[0]) if flat else ["arch"])
    writer.writeheader()
    writer.writerows(flat)
    return buffer.getvalue()


def to_json(report: Report) -> str:
    payload = {
        "metric": report.metric,
        "groups": records(report),
        "excluded": report.excluded,
        "comparisons": [
            {"arch": c.arch, "a": c.a, "b": c.b, "metric": c.metric, "n": c.test.n, "seeds": list(c.seeds),
             "mean_diff": c.test.mean_diff, "std_diff": c.test.std_diff, "t": c.test.t, "p_value": c.test.p_value,
             "verdict": c.test.verdict()}
            for c in report.comparisons
        ],
    }
    return json.dumps(payload, indent=2) + "\n"


def render_text(report: Report, fmt: str, standalone: bool = False) -> str:
    if fmt == "latex":
        return to_latex(report, standalone)
    return {"markdown": to_markdown, "csv": to_csv, "json": to_json}[fmt](report)
