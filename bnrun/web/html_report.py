"""`bnrun report --format html`: one self-contained file, the style sheet inline and the figures as inline SVG
(no script, no network reference); the same report body as the web view's `/`, its diagnostics table and the
note on why a row is bold included."""

from __future__ import annotations

from bnrun.analysis.grouping import Report
from bnrun.analysis.pivots import Pivot
from bnrun.store import EpochRecord
from bnrun.web.app import STATIC, environment
from bnrun.web.pages import pivot_context, report_context


def inline_assets() -> dict[str, str]:
    """The style sheet, as text to put inside the page."""
    return {"css": (STATIC / "style.css").read_text(encoding="utf-8")}


def report_html(content: Report | Pivot, epochs: dict[int, list[EpochRecord]] | None = None,
                diagnostics: dict | None = None) -> str:
    """The report (with its groups' learning curves, and the diagnostics' figures when given their records) or
    the pivot (with its sensitivity figure)."""
    page = pivot_context(content) if isinstance(content, Pivot) else report_context(content, epochs or {},
                                                                                      diagnostics)
    return environment().get_template("report.html").render(page=page, inline=True, assets=inline_assets())
