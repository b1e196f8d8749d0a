"""A page's query parameters parsed into the requests the CLI builds from the same options (the parsers of
`bnrun.requests`, so a URL and a command line select the same trials). Bad input raises `UsageError`."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import QueryParams

from bnrun.analysis.listing import RunQuery, sort_key_name
from bnrun.analysis.queries import ReportRequest
from bnrun.config import STORED_INT_MAX
from bnrun.errors import UsageError
from bnrun.requests.parsing import FilterOptions, RunSelection, parse_run_ids, report_request, require
from bnrun.store.storage import PAGE_SORT_FIELDS

PER_PAGE = 50
MAX_PER_PAGE = 500
FILTER_NAMES = ("arch", "bn", "bn_impl", "run_id", "since")


def text(params: QueryParams, name: str) -> str | None:
    """A parameter's value; an empty form field counts as not given."""
    value = params.get(name, "").strip()
    return value or None


def number(params: QueryParams, name: str, default: int | None, minimum: int,
           maximum: int = STORED_INT_MAX) -> int | None:
    value = text(params, name)
    if value is None:
        return default
    require(value.isascii() and value.isdigit() and minimum <= int(value) <= maximum,
            f"{name}: expected a whole number from {minimum} to {maximum}, got {value[:40]!r}")
    return int(value)


def flag(params: QueryParams, name: str) -> bool:
    value = text(params, name)
    require(value in (None, "1", "true", "on", "0", "false"), f"{name}: expected true or false, got {value!r}")
    return value in ("1", "true", "on")


def filter_options(params: QueryParams) -> FilterOptions:
    where = tuple(item for item in params.getlist("where") if item.strip())
    return FilterOptions(**{name: text(params, name) for name in FILTER_NAMES}, where=where)


def report_of_params(params: QueryParams) -> ReportRequest:
    """`/`'s parameters: those of `bnrun report` (arch, bn, bn_impl, run_id, since, where, metric, seeds, by, all)."""
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
    sort = text(params, "sort") or "-id"
    tags = tuple(tag for tag in params.getlist("tag") if tag.strip())
    query = RunSelection(filter_options(params), text(params, "status"), tags, sort).query(flag(params, "deleted"))
    name, _ = sort_key_name(sort)
    require(name in PAGE_SORT_FIELDS, f"sort: {name!r} is computed, not stored; sort by a stored field here")
    per_page = number(params, "per_page", PER_PAGE, 1)
    require(per_page <= MAX_PER_PAGE, f"per_page: at most {MAX_PER_PAGE}")
    return RunsPage(query, number(params, "page", 1, 1, STORED_INT_MAX // MAX_PER_PAGE), per_page)


def compared_ids(params: QueryParams) -> list[int]:
    """`/compare?ids=11,12`: two or more run ids (ranges allowed), in order."""
    value = text(params, "ids")
    require(value is not None, "ids: give two or more run ids, e.g. ?ids=11,12")
    try:
        ids = sorted(parse_run_ids(value))
    except UsageError as error:
        raise UsageError(str(error).replace("--run-id", "ids")) from None
    require(2 <= len(ids) <= 12, f"ids: compare 2 to 12 runs, got {len(ids)}")
    return ids
