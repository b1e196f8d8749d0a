"""A page's query parameters parsed into the requests the CLI builds from the same options (the parsers of
`bnrun.requests`, so a URL and a command line select the same trials). Bad input raises `UsageError`."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from starlette.datastructures import QueryParams

from bnrun.analysis.listing import RunQuery, sort_key_name
from bnrun.analysis.queries import ReportRequest
from bnrun.config import STORED_INT_MAX
from bnrun.errors import UsageError
from bnrun.requests.parsing import FilterOptions, RunSelection, parse_run_ids, report_request, require
from bnrun.store.storage import PAGE_SORT_FIELDS
from bnrun.web.access import TOKEN_PARAMETER

PER_PAGE = 50
MAX_PER_PAGE = 500
FILTER_NAMES = ("arch", "bn", "bn_impl", "run_id", "since")
# The parameters each page reads (beside access.py's token): any other is refused, not ignored.
REPORT_PARAMETERS = (*FILTER_NAMES, "where", "metric", "seeds", "by", "then", "all")
RUNS_PARAMETERS = (*FILTER_NAMES, "where", "status", "tag", "sort", "deleted", "page", "per_page")
COMPARE_PARAMETERS = ("ids",)


def known_only(params: QueryParams, names: tuple[str, ...] = ()) -> None:
    """UsageError naming the first parameter that is not in `names` (nor the access token)."""
    for name in params:
        if name not in names and name != TOKEN_PARAMETER:
            takes = f"this page takes {', '.join(names)}" if names else "this page takes none"
            close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
            raise UsageError(f"unknown parameter {name[:40]!r}; " + (f"did you mean {close[0]}?" if close else takes))


def text(params: QueryParams, name: str) -> str | None:
    """A parameter's value; an empty form field counts as not given."""
    value = params.get(name, "").strip()
    return value or None


def number(params: QueryParams, name: str, default: int | None, minimum: int,
           maximum: int = STORED_INT_MAX) -> int | None:
    value = text(params, name)
    if value is None:
        return default
    require(value.isascii() and value.isdigit() and int(value) >= minimum,
            f"{name}: expected a whole number, {minimum} or more, got {value[:40]!r}")
    require(int(value) <= maximum, f"{name}: at most {maximum}, got {value[:40]}")
    return int(value)


TRUE, FALSE = ("1", "true", "on", "yes"), ("0", "false", "off", "no")


def flag(params: QueryParams, name: str) -> bool:
    value = text(params, name)
    require(value is None or value.lower() in TRUE + FALSE, f"{name}: expected 1 or 0 (true or false), got {value!r}")
    return value is not None and value.lower() in TRUE


def filter_options(params: QueryParams) -> FilterOptions:
    where = tuple(item for item in params.getlist("where") if item.strip())
    return FilterOptions(**{name: text(params, name) for name in FILTER_NAMES}, where=where)


def report_of_params(params: QueryParams) -> ReportRequest:
    """`/`'s parameters: those of `bnrun report` (arch, bn, bn_impl, run_id, since, where, metric, seeds, by, all)
    and `then`."""
    known_only(params, REPORT_PARAMETERS)
    metric = text(params, "metric") or "test_acc_population"
    seeds = number(params, "seeds", None, 1)
    return report_request(filter_options(params), metric, seeds, text(params, "by"), flag(params, "all"))


@dataclass(frozen=True)
class RunsPage:
    """What `/runs` shows: the listing's query (`bnrun runs`' options) and which page of it."""

    query: RunQuery
    page: int = 1
    per_page: int = PER_PAGE

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page


def runs_of_params(params: QueryParams) -> RunsPage:
    """`/runs`' parameters: `bnrun runs`' filters, status, tag (repeatable), sort and deleted; page, per_page."""
    known_only(params, RUNS_PARAMETERS)
    sort = text(params, "sort") or "-id"
    tags = tuple(tag for tag in params.getlist("tag") if tag.strip())
    query = RunSelection(filter_options(params), text(params, "status"), tags, sort).query(flag(params, "deleted"))
    name, _ = sort_key_name(sort)
    require(name in PAGE_SORT_FIELDS, f"sort: {name!r} is computed, not stored; sort by a stored field here")
    per_page = number(params, "per_page", PER_PAGE, 1, MAX_PER_PAGE)
    return RunsPage(query, number(params, "page", 1, 1, STORED_INT_MAX // MAX_PER_PAGE), per_page)


def compared_ids(params: QueryParams) -> list[int]:
    """`/compare?ids=11,12`: two or more run ids (ranges allowed), in order."""
    known_only(params, COMPARE_PARAMETERS)
    value = text(params, "ids")
    require(value is not None, "ids: give two or more run ids, e.g. ?ids=11,12")
    try:
        ids = sorted(parse_run_ids(value))
    except UsageError as error:
        raise UsageError(str(error).replace("--run-id", "ids")) from None
    require(len(ids) != 1 or "," not in value, f"ids: run {ids[0]} given twice: name two different runs")
    require(2 <= len(ids) <= 12, f"ids: compare 2 to 12 runs, got {len(ids)}")
    return ids
