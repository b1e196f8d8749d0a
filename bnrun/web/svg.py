"""The pages' figures drawn as inline SVG on the server: no charting library, no script, nothing fetched, so a
page and the HTML report carry their figures as a few kilobytes of markup. A figure is small multiples (one
panel per architecture or diagnostic), each a mean line with a shaded band, points that can link to a run,
and marks on the x axis for cells that diverged or ended at chance; its legend is HTML beside the panels, so
it never covers an axis. Every text is escaped here."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, replace
from html import escape

from bnrun.analysis.styles import Style

WIDTH, HEIGHT = 430, 290
MARGIN = {"left": 58, "right": 14, "top": 30, "bottom": 46}
MARK_STEP = 13  # pixels between two lines' marks at one value, stacked upwards from the x axis


@dataclass(frozen=True)
class Line:
    """One series: y per x (None breaks the line), an optional band (low, high), and per point a tooltip and a
    link. `points`: points only, no line (a slice of trials)."""

    label: str
    style: Style
    xs: tuple
    ys: tuple
    low: tuple | None = None
    high: tuple | None = None
    tips: tuple = ()
    links: tuple = ()
    points: bool = False


@dataclass(frozen=True)
class Mark:
    """A mark on the x axis at `x`: "diverged" (an x) or "chance" (a triangle), its count beside it. Marks at one
    value stand above each other, in their order, each exactly at its value."""

    x: float
    kind: str
    text: str
    color: str
    where: str = ""  # the value as the axis names it (default: x)


@dataclass(frozen=True)
class Panel:
    title: str
    x_label: str
    y_label: str
    lines: tuple[Line, ...]
    marks: tuple[Mark, ...] = ()
    x_log: bool = False
    y_log: bool = False
    x_ticks: tuple | None = None  # the values to tick (a grid's own values); None: chosen
    x_names: tuple | None = None  # the ticks' labels, where not the values themselves (categories)
    integer_x: bool = False  # epochs: whole ticks, half a step of room either side
    y_bounds: tuple[float | None, float | None] = (None, None)  # the metric's range (0-100 % for accuracies)
    reference_y: float | None = None  # a dashed horizontal line (r(η) = 1)
    note: str = ""  # below the panel: what it leaves out of its y range
    width: int = WIDTH
    y_limits: tuple[float, float] | None = None  # a range shared with other panels (small multiples)


@dataclass(frozen=True)
class Figure:
    """Panels side by side, one legend for all of them, a caption; `kind` names it for the page (curves,
    diagnostic, sensitivity, grid)."""

    title: str
    panels: tuple[Panel, ...]
    legend: tuple[tuple[str, Style], ...]
    kind: str
    caption: str = ""
    marks_legend: tuple[str, ...] = field(default=())


# -- scales -------------------------------------------------------------------------------------------------------

def nice_step(span: float, count: int = 5) -> float:
    raw = span / max(count, 1)
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next((m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw), 10 * power)


def linear_ticks(low: float, high: float, integer: bool = False) -> list[float]:
    step = nice_step(high - low)
    if integer:
        step = max(1.0, math.ceil(step))
    first = math.ceil(low / step - 1e-9) * step
    ticks, value = [], first
    while value <= high + 1e-9 * max(1.0, abs(high)):
        ticks.append(round(value, 10))
        value += step
    return ticks


def log_ticks(low: float, high: float) -> list[float]:
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    multiples = (1, 2, 5) if math.log10(high / low) <= 2.5 else (1,)
    ticks = [m * 10.0**d for d in decades for m in multiples if low <= m * 10.0**d <= high]
    if len(ticks) < 3:  # less than a decade: evenly spaced values read better than one power of ten
        ticks = [tick for tick in linear_ticks(low, high) if tick > 0]
    return ticks or [low, high]


def tick_text(value: float) -> str:
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{value:g}"


@dataclass(frozen=True)
class Scale:
    low: float
    high: float
    start: float  # pixels
    end: float
    log: bool = False

    def __call__(self, value: float) -> float:
        if self.log:
            low, high, value = math.log10(self.low), math.log10(self.high), math.log10(value)
        else:
            low, high = self.low, self.high
        fraction = 0.5 if high == low else (value - low) / (high - low)
        return self.start + fraction * (self.end - self.start)


def finite(values) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def padded(values: list[float], log: bool, bounds: tuple = (None, None)) -> tuple[float, float]:
    """The range of `values` with 6 % room either side, inside `bounds` (a log axis keeps positive values)."""
    if log:
        values = [v for v in values if v > 0] or [1.0]
        low, high = math.log10(min(values)), math.log10(max(values))
        pad = (high - low) * 0.06 or 0.3
        return 10 ** (low - pad), 10 ** (high + pad)
    low, high = min(values), max(values)
    pad = (high - low) * 0.06 or (abs(high) * 0.05 or 0.5)
    low, high = low - pad, high + pad
    if bounds[0] is not None:
        low = max(low, bounds[0])
    if bounds[1] is not None:
        high = min(high, bounds[1])
    return low, high


def x_range(panel: Panel) -> tuple[float, float]:
    xs = finite([x for line in panel.lines for x in line.xs] + [m.x for m in panel.marks] + list(panel.x_ticks or ()))
    if not xs:
        return 0.0, 1.0
    if panel.integer_x:
        return min(min(xs), 1) - 0.5, max(xs) + 0.5
    if panel.x_log:
        positive = [x for x in xs if x > 0] or [1.0]
        factor = (max(positive) / min(positive)) ** 0.06 if max(positive) > min(positive) else 2.0
        return min(positive) / factor, max(positive) * factor
    return padded(xs, False)


def y_range(panel: Panel) -> tuple[float, float]:
    """From the lines and their bands only: the marks on the axis (diverged, chance) never stretch it."""
    if panel.y_limits is not None:
        return panel.y_limits
    values = [v for line in panel.lines for v in (*line.ys, *(line.low or ()), *(line.high or ()))]
    if panel.reference_y is not None:
        values.append(panel.reference_y)
    values = finite(values)
    return padded(values or [0.0, 1.0], panel.y_log, panel.y_bounds)


# -- drawing ------------------------------------------------------------------------------------------------------

def attrs(**values) -> str:
    return " ".join(f'{name.rstrip("_").replace("_", "-")}="{escape(str(value))}"' for name, value in values.items()
                    if value is not None and value != "")


def text(x: float, y: float, body: str, **extra) -> str:
    return f"<text {attrs(x=f'{x:.1f}', y=f'{y:.1f}', **extra)}>{escape(body)}</text>"


def path_of(points: list[tuple[float, float]]) -> str:
    return "M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in points)


def runs_of(xs, ys) -> list[list[int]]:
    """The indices of consecutive defined points (None breaks a line)."""
    pieces, current = [], []
    for index, y in enumerate(ys):
        defined = y is not None and xs[index] is not None and math.isfinite(y)
        if defined:
            current.append(index)
        elif current:
            pieces.append(current)
            current = []
    return pieces + ([current] if current else [])


def clamp(value: float, scale: Scale) -> float:
    low, high = sorted((scale.start, scale.end))
    return min(max(value, low), high)


def band_svg(line: Line, sx: Scale, sy: Scale) -> list[str]:
    if line.low is None or line.high is None:
        return []
    shapes = []
    lows = [lo if hi is not None and drawable(lo, False) and drawable(x, sx.log) else None
            for x, lo, hi in zip(line.xs, line.low, line.high)]
    for piece in runs_of(line.xs, lows):
        if len(piece) < 2:
            continue
        upper = [(sx(line.xs[i]), clamp(sy(max(line.high[i], sy.low) if sy.log else line.high[i]), sy)) for i in piece]
        lower = [(sx(line.xs[i]), clamp(sy(max(line.low[i], sy.low) if sy.log else line.low[i]), sy))
                 for i in reversed(piece)]
        shapes.append(f"<path {attrs(class_='band', d=path_of(upper + lower) + ' Z', fill=line.style.color)} "
                      'fill-opacity="0.18" stroke="none"/>')
    return shapes


def marker_svg(x: float, y: float, style: Style, tip: str, link: str | None) -> str:
    if style.marker == "none":
        shape = ""
    elif style.marker == "square":
        corner = attrs(x=f"{x - 2.6:.1f}", y=f"{y - 2.6:.1f}")
        shape = f'<rect {attrs(class_="point")} {corner} width="5.2" height="5.2" {attrs(fill=style.color)}>'
    else:
        shape = f'<circle {attrs(class_="point", cx=f"{x:.1f}", cy=f"{y:.1f}", r=2.8, fill=style.color)}>'
    if not shape:
        return ""
    closing = "</rect>" if style.marker == "square" else "</circle>"
    body = shape + (f"<title>{escape(tip)}</title>" if tip else "") + closing
    return f'<a {attrs(href=link)}>{body}</a>' if link else body


def drawable(value: float | None, log: bool) -> bool:
    """A value a scale can place: defined, finite, and positive on a log scale."""
    return value is not None and math.isfinite(value) and (not log or value > 0)


def line_svg(line: Line, sx: Scale, sy: Scale) -> list[str]:
    shapes = band_svg(line, sx, sy)
    usable = [y if drawable(y, sy.log) and drawable(x, sx.log) else None for x, y in zip(line.xs, line.ys)]
    if not line.points:
        for piece in runs_of(line.xs, usable):
            points = [(sx(line.xs[i]), sy(usable[i])) for i in piece]
            if len(points) > 1:
                shapes.append(f"<path {attrs(class_='line', d=path_of(points), stroke=line.style.color)} "
                              f"fill=\"none\" stroke-width=\"1.8\" {attrs(stroke_dasharray=line.style.dash)}/>")
    for index, y in enumerate(usable):
        if y is None:
            continue
        tip = line.tips[index] if index < len(line.tips) else f"{line.label}: {tick_text(y)}"
        link = line.links[index] if index < len(line.links) else None
        shapes.append(marker_svg(sx(line.xs[index]), sy(y), line.style, tip, link))
    return shapes


def stacked(marks: tuple[Mark, ...]) -> list[tuple[Mark, int]]:
    """Each mark with its level: how many marks at the same value come before it."""
    seen: dict[float, int] = {}
    levels = []
    for mark in marks:
        levels.append((mark, seen.get(mark.x, 0)))
        seen[mark.x] = seen.get(mark.x, 0) + 1
    return levels


def mark_svg(mark: Mark, level: int, sx: Scale, bottom: float) -> str:
    x = sx(mark.x)
    y = bottom - 6 - MARK_STEP * level
    if mark.kind == "diverged":
        shape = (f'<path d="M{x - 4:.1f},{y - 4:.1f} L{x + 4:.1f},{y + 4:.1f} M{x - 4:.1f},{y + 4:.1f} '
                 f'L{x + 4:.1f},{y - 4:.1f}" stroke="{escape(mark.color)}" stroke-width="2.2"/>')
    else:
        shape = (f'<path d="M{x - 4.5:.1f},{y - 4:.1f} L{x + 4.5:.1f},{y - 4:.1f} L{x:.1f},{y + 4:.1f} Z" '
                 f'fill="{escape(mark.color)}"/>')
    title = f"<title>{escape(mark_title(mark))}</title>"
    label = text(x + 7, y + 3, mark.text, fill=mark.color, font_size=8, text_anchor="start")
    return f'<g {attrs(class_="mark " + mark.kind)}>{title}{shape}{label}</g>'


def mark_title(mark: Mark) -> str:
    what = "diverged" if mark.kind == "diverged" else "at chance level"
    return f"{mark.where or tick_text(mark.x)}: {mark.text} trials {what}"


def axes_svg(panel: Panel, sx: Scale, sy: Scale, box: tuple[float, float, float, float]) -> list[str]:
    left, top, right, bottom = box
    parts = [f'<rect class="plot-area" x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
             'fill="#fff" stroke="#999"/>']
    x_ticks = list(panel.x_ticks) if panel.x_ticks else (
        log_ticks(sx.low, sx.high) if panel.x_log else linear_ticks(sx.low, sx.high, panel.integer_x))
    names = list(panel.x_names) if panel.x_names else [tick_text(value) for value in x_ticks]
    for value, name in zip(x_ticks, names):
        if not drawable(value, sx.log):
            continue
        x = sx(value)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}" stroke="#eee"/>')
        parts.append(text(x, bottom + 14, name, font_size=10, text_anchor="middle"))
    y_ticks = log_ticks(sy.low, sy.high) if panel.y_log else linear_ticks(sy.low, sy.high)
    for value in y_ticks:
        y = sy(value)
        parts.append(f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(text(left - 5, y + 3.5, tick_text(value), font_size=10, text_anchor="end"))
    parts.append(text((left + right) / 2, bottom + 32, panel.x_label, font_size=11, text_anchor="middle",
                      class_="x-label"))
    middle = (top + bottom) / 2
    parts.append(text(14, middle, panel.y_label, font_size=11, text_anchor="middle", class_="y-label",
                      transform=f"rotate(-90 14 {middle:.1f})"))
    if panel.reference_y is not None and sy.low < panel.reference_y < sy.high:
        y = sy(panel.reference_y)
        parts.append(f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#777" stroke-dasharray="4 3"/>')
    return parts


def shared_y(panels: tuple[Panel, ...]) -> tuple[Panel, ...]:
    """The panels on one y range, the union of theirs, so that small multiples compare at a glance."""
    ranges = [y_range(panel) for panel in panels if panel.lines]
    if not ranges:
        return panels
    limits = (min(low for low, _ in ranges), max(high for _, high in ranges))
    return tuple(replace(panel, y_limits=limits) for panel in panels)


def panel_svg(panel: Panel, ident: str, width: int = WIDTH, height: int = HEIGHT) -> str:
    """One panel as an <svg> element: title, axes, bands, lines, points, marks; `ident` names its clip path
    (unique in the page)."""
    left, top = MARGIN["left"], MARGIN["top"]
    right, bottom = width - MARGIN["right"], height - MARGIN["bottom"]
    sx = Scale(*x_range(panel), left, right, panel.x_log)
    sy = Scale(*y_range(panel), bottom, top, panel.y_log)
    parts = [text(width / 2, 17, panel.title, font_size=12, font_weight=600, text_anchor="middle", class_="title")]
    parts += axes_svg(panel, sx, sy, (left, top, right, bottom))
    clip = f"clip-{ident}"
    parts.append(f'<clipPath id="{clip}"><rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}"/>'
                 "</clipPath>")
    parts.append(f'<g clip-path="url(#{clip})">')
    for line in panel.lines:
        parts += line_svg(line, sx, sy)
    parts.append("</g>")
    parts += [mark_svg(mark, level, sx, bottom) for mark, level in stacked(panel.marks) if drawable(mark.x, sx.log)]
    return (f'<svg class="panel" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" {attrs(aria_label=panel.title)}>'
            f'<g font-family="system-ui, sans-serif" fill="#222">{"".join(parts)}</g></svg>')


def swatch_svg(style: Style) -> str:
    """The legend's picture of a style: a short line in its colour and dash, with its marker."""
    marker = "" if style.marker == "none" else (
        f'<circle cx="14" cy="6" r="2.8" fill="{escape(style.color)}"/>' if style.marker == "circle"
        else f'<rect x="11.4" y="3.4" width="5.2" height="5.2" fill="{escape(style.color)}"/>')
    line = (f'<line x1="1" x2="27" y1="6" y2="6" stroke="{escape(style.color)}" stroke-width="2" '
            f'{attrs(stroke_dasharray=style.dash)}/>') if style.line else ""
    return f'<svg class="swatch" width="28" height="12" viewBox="0 0 28 12">{line}{marker}</svg>'



MARK_SWATCHES = {
    "diverged": '<svg class="swatch" width="28" height="12"><path d="M10,2 L18,10 M10,10 L18,2" stroke="#777" '
                'stroke-width="2"/></svg>',
    "chance": '<svg class="swatch" width="28" height="12"><path d="M9.5,2 L18.5,2 L14,10 Z" fill="#777"/></svg>',
}
MARK_TEXTS = {"diverged": "diverged (k/n trials), on the x axis",
              "chance": "ended at chance level (10 %), on the x axis; left out of the y range"}


def figure_html(figure: Figure) -> str:
    """The figure as HTML: its title, the panels side by side, the legend below them, the caption."""
    prefix = f"{zlib.crc32((figure.kind + figure.title).encode()):08x}"
    panels = "".join(panel_svg(panel, f"{prefix}-{index}", panel.width) for index, panel in enumerate(figure.panels))
    notes = "".join(f'<p class="panel-note">{escape(p.title)}: {escape(p.note)}</p>' for p in figure.panels if p.note)
    legend = "".join(f"<li>{swatch_svg(style)} {escape(label)}</li>" for label, style in figure.legend)
    legend += "".join(f"<li>{MARK_SWATCHES[kind]} {escape(MARK_TEXTS[kind])}</li>" for kind in figure.marks_legend)
    caption = f'<p class="caption">{escape(figure.caption)}</p>' if figure.caption else ""
    return (f'<figure {attrs(class_="chart", data_kind=figure.kind)}><figcaption>{escape(figure.title)}</figcaption>'
            f'<div class="panels">{panels}</div><ul class="legend">{legend}</ul>{notes}{caption}</figure>')
