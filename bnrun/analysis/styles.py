"""How a group's series looks, in the PNG figures (matplotlib) and the web view's (SVG) alike: the hue is the BN
placement, the dash and the point marker the implementation, and a group that repeats an earlier one's pair in a
panel takes a lighter shade of its hue; a comparison of runs gives each run its own hue."""

from __future__ import annotations

from dataclasses import dataclass

from bnrun.config import impl_text


@dataclass(frozen=True)
class Style:
    """How a series looks: its colour, its dash (an SVG stroke-dasharray, "" for solid) and its point marker."""

    color: str
    dash: str = ""
    marker: str = "circle"  # circle, square, none
    line: bool = True  # False: points only (each trial of a grid)


PLACEMENT_COLORS = {"pre": "#1f6fb4", "post": "#d95f02", "none": "#555555"}  # one hue per BN placement
IMPL_DASHES = {"custom+fused": "", "custom": "8 3 2 3", "torch": "5 3", "—": ""}  # one dash per implementation
IMPL_MARKERS = {"torch": "square"}
RUN_COLORS = ("#1f6fb4", "#d95f02", "#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
              "#17becf", "#8c564b", "#bcbd22")  # a comparison's runs, one each


def impl_of(bn: object, bn_impl: object, fused: object) -> str:
    return "—" if bn_impl is None else impl_text(str(bn), str(bn_impl), bool(fused))


def lighter(color: str, amount: float) -> str:
    """`color` mixed with white (0: itself; 1: white): groups that share a placement and an implementation."""
    red, green, blue = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(c + (255 - c) * amount):02x}" for c in (red, green, blue))


def group_style(bn: object, impl: str, shade: int = 0) -> Style:
    color = PLACEMENT_COLORS.get(str(bn), "#555555")
    return Style(lighter(color, min(0.6, 0.3 * shade)), IMPL_DASHES.get(impl, "2 2"), IMPL_MARKERS.get(impl, "circle"))


def styles_of(keys: list[tuple[str, str]]) -> list[Style]:
    """A style per (bn, impl): a group that repeats an earlier one's pair gets a lighter shade of its hue."""
    seen: dict[tuple[str, str], int] = {}
    styles = []
    for key in keys:
        styles.append(group_style(key[0], key[1], seen.get(key, 0)))
        seen[key] = seen.get(key, 0) + 1
    return styles


def label_styles(labels: list[dict]) -> list[Style]:
    """The styles of the groups or pivot rows of one panel, from their labels (bn, bn_impl, fused)."""
    return styles_of([(str(found.get("bn")), impl_of(found.get("bn"), found.get("bn_impl"), found.get("fused")))
                      for found in labels])


def group_styles(groups: list) -> list[Style]:
    """The styles of a panel's report groups (`grouping.Group`s)."""
    return label_styles([{name: group.value(name) for name in ("bn", "bn_impl", "fused")} for group in groups])
