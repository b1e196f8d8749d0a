"""Requests below both front ends: the filters, run selections and report requests a command line
or a URL's query parameters ask for, parsed and checked the same way for `bnrun` and `bnrun ui`
(and the notebook's `bnrun.load`). Every parser raises `UsageError` itself; nothing here touches the
store, the data or torch, so bad input changes nothing."""

from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass, field, replace
from datetime import datetime

from bnrun.analysis.grouping import PIVOT_FIELDS, PIVOT_FIELDS_LISTED, RunFilter, spelled
from bnrun.analysis.listing import RunQuery
from bnrun.analysis.metrics import METRICS
from bnrun.analysis.queries import ReportRequest
from bnrun.config import ARCHS, PLACEMENTS, STORED_INT_MAX, TrainConfig
from bnrun.errors import UsageError, unknown_choice
from bnrun.registry import OPTIONS
from bnrun.store import STATUSES

DEFAULTS = TrainConfig()  # the training defaults; the options' are these, spelled as options


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def require_choice(value: str, choices: tuple[str, ...] | dict[str, str | None], option: str,
                   listed_in: str | None = None) -> str:
    """`value` if it is one of `choices`, else UsageError naming them (or where they are listed)."""
    if value not in choices:
        raise UsageError(unknown_choice(option, value, choices, "value", listed_in))
    return value


def choices_text(choices: tuple[str, ...] | dict[str, str | None]) -> str:
    """('a', 'b', 'c') -> 'a, b or c' (a --help text); a dict's descriptions, where given, in
    parentheses after each name."""
    about = choices if isinstance(choices, dict) else {}
    names = [f"{name} ({about[name]})" if about.get(name) else name for name in choices]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def comma_items(text: str, option: str) -> list[str]:
    """'a, b' -> ['a', 'b']: a comma list's items, stripped; UsageError for an empty item between or after
    others ('0.1,,0.2', '0.1,'), a slip that dropping it would hide. An empty text gives []."""
    parts = [part.strip() for part in text.split(",")]
    require(len(parts) == 1 or all(parts), f"{option}: an empty value in {text!r}; separate values by one comma")
    return [part for part in parts if part]


def split_list(value: str, allowed: tuple[str, ...], option: str) -> tuple[str, ...]:
    """A comma list of allowed values, deduplicated in order; UsageError names the unknown ones."""
    items = tuple(dict.fromkeys(comma_items(value, option)))
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise UsageError(
            f"{option}: unknown value {', '.join(unknown) or repr(value)}; choose from {', '.join(allowed)} "
            "(comma-separated)"
        )
    return items


def optional_list(value: str | None, allowed: tuple[str, ...], option: str) -> tuple[str, ...]:
    """`split_list`, or () when the option was not given."""
    return split_list(value, allowed, option) if value else ()


def number(text: str, kind: type) -> int | float:
    """`kind(text)` for ASCII text only: Python reads other scripts' digits too (float('٠.١') is 0.1), which
    a stored query or a caption would then echo as typed. ValueError otherwise."""
    if not text.isascii():
        raise ValueError(text)
    return kind(text)


def parse_numbers(text: str | int | float, kind: type, option: str, minimum: float, strict: bool = False,
                  maximum: float = STORED_INT_MAX) -> tuple:
    """'0.01,0.1,1' -> (0.01, 0.1, 1.0): a comma list of numbers, each ≥ minimum (> with strict) and
    at most `maximum` (by default the largest integer the store holds)."""
    parts = comma_items(str(text), option)
    require(bool(parts), f"{option}: no value given")
    values = []
    for part in parts:
        try:
            value = number(part, kind)
        except ValueError:
            raise UsageError(f"{option}: {part!r} is not {'an integer' if kind is int else 'a number'}") from None
        bad = value <= minimum if strict else value < minimum
        bound = "positive" if strict else (f"at least {minimum:g}" if minimum else "≥ 0")
        require(math.isfinite(value), f"{option} must be a finite number, got {part}")
        require(not bad, f"{option} must be {bound}, got {part}")
        require(value <= maximum, f"{option} must be at most {maximum:,}, got {part}")
        values.append(value)
    return tuple(dict.fromkeys(values))


MAX_ID_RANGE = 1_000_000  # ids one range may span: the ids are listed, so 1-10^12 is refused, not listed


def parse_run_ids(text: str) -> frozenset[int]:
    """'1-12,15' -> {1, ..., 12, 15}: ids up to the largest the store holds, a range spanning at most
    MAX_ID_RANGE of them."""
    ids: set[int] = set()
    for part in comma_items(text, "--run-id"):
        low, _, high = part.partition("-")
        if not (low.isascii() and low.isdigit()) or (high and not (high.isascii() and high.isdigit())):
            raise UsageError(f"--run-id: {part!r} is not an id or a range like 1-12")
        first, last = int(low), int(high or low)
        require(last >= first, f"--run-id: {part!r} runs backwards; write {high}-{low}")
        require(last <= STORED_INT_MAX, f"--run-id: {part!r}: run ids go up to {STORED_INT_MAX}")
        require(last - first < MAX_ID_RANGE, f"--run-id: {part!r} spans more than {MAX_ID_RANGE:,} ids")
        ids.update(range(first, last + 1))
    require(bool(ids), f"--run-id: no id in {text!r}")
    return frozenset(ids)


IMPL_LABELS = ("custom", "custom+fused", "torch")  # --bn-impl and --where bn_impl=: names and the tables' labels
CHOICES = {**{option.name: option.choices for option in OPTIONS if option.choices}, "bn_impl": IMPL_LABELS}
# a switch's value as --where takes it: true or false, or yes and no as the views print it (option_text)
BOOLEANS = {"true": True, "false": False, "yes": True, "no": False}


def option_kind(name: str) -> type:
    """A training option's value type, read off TrainConfig's annotations (`int | None` is int)."""
    hint = typing.get_type_hints(TrainConfig)[name]
    return next((kind for kind in typing.get_args(hint) if kind is not type(None)), hint)


NUMERIC_FIELDS = tuple(name for name in PIVOT_FIELDS if option_kind(name) in (int, float))  # what --x can name


def option_value(name: str, text: str) -> object:
    """One --where value as the store holds it: a choice, a bool (true/false), a number, or none."""
    where = f"--where {name}={text}"
    if name in CHOICES:
        require(text in CHOICES[name], f"{where}: choose from {', '.join(CHOICES[name])}")
        return text
    if text.lower() == "none":
        require(getattr(DEFAULTS, name) is None, f"{where}: {name} always has a value")
        return None
    if option_kind(name) is bool:
        require(text.lower() in BOOLEANS, f"{where}: {name} is yes or no (true or false)")
        return BOOLEANS[text.lower()]
    if option_kind(name) is str:
        return text
    try:
        value = number(text, option_kind(name))
    except ValueError:
        kind = "an integer" if option_kind(name) is int else "a number"
        raise UsageError(f"{where}: {text!r} is not {kind}") from None
    require(math.isfinite(value), f"{where}: not a finite number")
    require(abs(value) <= STORED_INT_MAX, f"{where}: beyond any value the store holds")
    return value


def parse_where(items: list[str]) -> tuple[tuple[str, tuple], ...]:
    """['epochs=10', 'lr=0.1,0.3'] -> (('epochs', (10,)), ('lr', (0.1, 0.3))): each option's allowed values,
    typed as the store holds them; an option named twice keeps the values both allow (none: contradictory)."""
    allowed: dict[str, tuple] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        parts = comma_items(value, f"--where {name}")
        if not sep or not parts:
            raise UsageError(f"--where: {item!r} is not OPTION=VALUE, e.g. epochs=10 or lr=0.1,0.3")
        if name not in PIVOT_FIELDS:
            raise UsageError(unknown_choice("--where", name, PIVOT_FIELDS, listed_in=PIVOT_FIELDS_LISTED))
        values = tuple(dict.fromkeys(option_value(name, part) for part in parts))
        allowed[name] = both(allowed[name], values, f"--where {name}") if name in allowed else values
    return tuple(allowed.items())


def both(first: tuple, second: tuple, what: str) -> tuple:
    """The values two conditions on one option both allow; UsageError when none."""
    common = tuple(value for value in first if value in second)
    require(bool(common),
            f"contradictory filters: {what} cannot be both {spelled_list(first)} and {spelled_list(second)}")
    return common


def spelled_list(values: tuple) -> str:
    return ",".join(spelled(value) for value in values)


def parse_since(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since: {text!r} is not a date like 2026-11-24") from None


def number_text(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class FilterOptions:
    """Which trials a report or a plot covers, as typed on the command line."""

    arch: str | None = None
    bn: str | None = None
    bn_impl: str | None = None
    run_id: str | None = None
    since: str | None = None
    where: tuple[str, ...] = field(default_factory=tuple)

    def run_filter(self) -> RunFilter:
        """The filter, with --arch/--bn/--bn-impl and --where on the same option merged (UsageError when
        together they allow nothing)."""
        where = dict(parse_where(list(self.where)))
        lists = {"arch": optional_list(self.arch, ARCHS, "--arch"), "bn": optional_list(self.bn, PLACEMENTS, "--bn"),
                 "bn_impl": optional_list(self.bn_impl, IMPL_LABELS, "--bn-impl")}
        for name, given in lists.items():
            if name in where:
                lists[name] = merged(name, given, where.pop(name))
        return RunFilter(
            archs=lists["arch"],
            placements=lists["bn"],
            impls=lists["bn_impl"],
            run_ids=parse_run_ids(self.run_id) if self.run_id else None,
            since=parse_since(self.since) if self.since else None,
            where=tuple(where.items()),
        )


def merged(name: str, given: tuple[str, ...], where: tuple[str, ...]) -> tuple[str, ...]:
    """--arch/--bn/--bn-impl's values with --where's on the same option (for bn_impl, custom includes
    custom+fused); UsageError when none is left."""
    if not given:
        return where
    if name != "bn_impl":
        return both(given, where, f"--{name} and --where {name}")

    def covers(a: str, b: str) -> bool:
        return a == b or (a == "custom" and b == "custom+fused")

    pairs = [(a, b) for a in given for b in where if covers(a, b) or covers(b, a)]
    common = tuple(dict.fromkeys(b if covers(a, b) else a for a, b in pairs))
    require(bool(common), f"contradictory filters: --bn-impl {','.join(given)} and --where bn_impl={','.join(where)}")
    return common


def one_pivot(by: list[str] | None) -> str | None:
    """--by's value: repeatable on the command line only so that a second one is refused, not silently kept."""
    by = by or []
    require(len(by) <= 1, f"--by given {len(by)} times ({', '.join(by)}): a report pivots on one option; "
                          "hold the others with --where")
    return by[0] if by else None


def report_request(
    filters: FilterOptions, metric: str, seeds: int | None = None, by: str | None = None, everything: bool = False
) -> ReportRequest:
    """`everything` (--all): every trial the filters accept, not one recipe's on one screen."""
    require(by is None or by.strip() != "", "--by: give an option to pivot on, e.g. --by lr")
    by = by.replace("-", "_") if by else None
    if by is not None and by not in PIVOT_FIELDS:
        raise UsageError(unknown_choice("--by", by, PIVOT_FIELDS, listed_in=PIVOT_FIELDS_LISTED))
    require_choice(metric, METRICS, "--metric", listed_in="bnrun report --help lists them")
    require(seeds is None or seeds > 0, f"--seeds must be positive, got {seeds}")
    return ReportRequest(metric, filters.run_filter(), seeds, by, everything)


TAG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/=+-]{0,63}")


def run_ids_of(values: list[str], option: str = "RUN") -> list[int]:
    """['3', '5-7,9'] -> [3, 5, 6, 7, 9]: run ids as arguments, each an id or a range, in order."""
    ids: list[int] = []
    for value in values:
        try:
            ids.extend(sorted(parse_run_ids(value)))
        except UsageError as error:  # parse_run_ids' reason, under this argument's name
            raise UsageError(str(error).replace("--run-id", option, 1)) from None
    require(bool(ids), f"{option}: give at least one run id")
    return list(dict.fromkeys(ids))


def tags_of(values: list[str] | None, option: str) -> tuple[str, ...]:
    tags = tuple(dict.fromkeys(values or ()))
    bad = [tag for tag in tags if not TAG_PATTERN.fullmatch(tag)]
    require(
        not bad,
        f"{option}: {bad[0]!r} is not a tag (letters, digits and _ . : / = + -, up to 64, no spaces)" if bad else "",
    )
    return tags


@dataclass(frozen=True)
class RunSelection:
    """Which runs `bnrun runs` and `bnrun export runs` cover, in which order, how many, as typed."""

    filters: FilterOptions
    status: str | None = None
    tags: tuple[str, ...] = ()
    sort: str = "-id"  # newest first, in every listing
    limit: int | None = None

    def query(self, deleted: bool = False) -> RunQuery:
        """The query (UsageError for an unknown sort key, a limit below 1 or an unknown status)."""
        from bnrun.analysis.listing import sort_key_name

        try:
            sort_key_name(self.sort)
        except ValueError as error:
            raise UsageError(str(error)) from None
        require(self.limit is None or self.limit > 0, f"--limit must be a positive count, got {self.limit}")
        return RunQuery(
            run_filter=self.filters.run_filter(),
            statuses=optional_list(self.status, STATUSES, "--status"),
            tags=tags_of(list(self.tags), "--tag"),
            deleted=deleted,
            sort=self.sort,
            limit=self.limit,
        )


SCREEN_RUNS = 30  # the runs `bnrun runs` lists in a terminal without --limit or --all


def listing_query(selection: RunSelection, deleted: bool, terminal: bool, everything: bool) -> RunQuery:
    """`bnrun runs`' query: newest first unless --sort says otherwise, in a terminal or piped alike; in a
    terminal, without --limit or --all, only the newest SCREEN_RUNS runs."""
    require(not (everything and selection.limit is not None), "--all and --limit are exclusive; give one of them")
    query = selection.query(deleted)
    if not terminal or everything or selection.limit is not None:
        return query
    return replace(query, limit=SCREEN_RUNS)
