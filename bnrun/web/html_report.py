"""`bnrun report --format html`: one self-contained file, CSS, plotly.js and the figures inline, no
network reference; the same report body as the web view's `/`."""

from __future__ import annotations

from pathlib import Path

from bnrun.analysis.grouping import Report
from bnrun.analysis.pivots import Pivot
from bnrun.store import EpochRecord
from bnrun.web import charts
from bnrun.web.app import STATIC, environment
from bnrun.web.pages import pivot_context, report_context


def inline_assets() -> dict[str, str]:
    """The style sheet and the scripts, as text to put inside the page."""
    read = lambda path: Path(path).read_text(encoding="utf-8")
    return {"css": read(STATIC / "style.css"), "js": read(STATIC / "bnrun.js"),
            "plotly": read(charts.plotly_js()).replace("</script", "<\\/script")}


def report_html(content: Report | Pivot, epochs: dict[int, list[EpochRecord]] | None = None) -> str:
    """The report (with its groups' learning curves) or the pivot (with its sensitivity figure)."""
    page = pivot_context(content) if isinstance(content, Pivot) else report_context(content, epochs or {})
    return environment().get_template("report.html").render(page=page, inline=True, assets=inline_assets())
