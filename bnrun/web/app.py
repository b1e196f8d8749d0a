"""The Starlette application: GET routes only (any other method gets 405), the store opened read-only
for each request (SQLite mode=ro, PostgreSQL READ ONLY transactions), Jinja autoescape on every page,
and every expected failure answered with a status code and one line."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bnrun.analysis.export import EXPORT_FORMATS
from bnrun.analysis.grouping import PIVOT_FIELDS
from bnrun.analysis.metrics import METRICS
from bnrun.analysis.metrics import signed as signed_text
from bnrun.analysis.stats import p_text
from bnrun.config import option_text
from bnrun.errors import NothingMatched, RunNotFound, StoreError, UsageError
from bnrun.store import RunStatus, Store
from bnrun.web import pages
from bnrun.web.access import Access, AccessMiddleware
from bnrun.web.params import COMPARE_PARAMETERS, compared_ids, known_only, report_of_params, runs_of_params
from bnrun.web.svg import figure_html

REFRESH_S = 10  # a page with running trials reloads itself this often
STATIC = Path(__file__).parent / "static"
# Everything from this server only: no page can load from, or send to, the network.
CLAIMS = Path("study/claims.toml")  # as `bnrun claims`: the claims file, relative to where the view is served
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def environment() -> Environment:
    env = Environment(loader=PackageLoader("bnrun.web"), autoescape=select_autoescape(default=True))
    env.filters["number"] = number_text
    env.filters["p"] = p_text
    env.filters["when"] = lambda value: "" if value is None else value.isoformat(sep=" ", timespec="seconds")
    env.filters["figure_json"] = lambda figure: json.dumps(figure, default=str)
    env.filters["shown"] = option_text  # None, booleans and floats as the CLI shows them
    env.filters["chart"] = lambda figure: Markup(figure_html(figure))  # svg.py escapes every text it draws
    env.filters["short_when"] = short_when
    return env


def short_when(value: datetime | None) -> str:
    """A timestamp in a listing's width: '12-06 05:03' (the full one is the cell's title)."""
    return "" if value is None else value.strftime("%m-%d %H:%M")


def number_text(value: object, places: int = 2, signed: bool = False) -> str:
    """A float to `places` decimals ('—' for none); other values as they are."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return signed_text(value, places) if signed else f"{value:.{places}f}"
    return str(value)


class StoreView:
    """Opens the store read-only for one request, so a page sees what the store holds now."""

    def __init__(self, db: str | None) -> None:
        self.db = db

    @contextlib.contextmanager
    def open(self) -> Iterator[Store]:
        store = Store(self.db, read_only=True)
        try:
            yield store
        finally:
            store.close()


def create_app(db: str | None, access: Access = Access(), claims_file: Path = CLAIMS) -> Starlette:
    """The read-only view of the store at `db` (a path or URL, as `--db`), answering as `access` allows
    (default: loopback names, no token), its claims read from `claims_file` on each visit of /claims; the store
    is checked first."""
    view = StoreView(db)
    with view.open():
        pass  # a missing, damaged or foreign store is refused here, before anything listens
    env = environment()
    choices = pages.FilterChoices()

    def html(name: str, request: Request, **context) -> HTMLResponse:
        body = env.get_template(name).render(request=request, query=str(request.query_params), **context)
        return HTMLResponse(body, headers=SECURITY_HEADERS)

    def report(request: Request) -> Response:
        given = filled(request.query_params, "where")
        controls = {"params": request.query_params, "metrics": METRICS, "pivot_fields": PIVOT_FIELDS, "where": given}
        with view.open() as store:
            controls["choices"] = choices.of(store)
            suggested = [f"study={name}" for name in controls["choices"]["study"]]
            controls |= {"where_suggested": suggested, "where_size": box_size([*given, *suggested])}
            try:
                ask = report_of_params(request.query_params)
                then = second_option(request.query_params, ask.by)
            except UsageError as error:  # the form again, as submitted, with what to correct above it
                response = html("report.html", request, error=web_wording(str(error)), **controls)
                response.status_code = 400
                return response
            for second_try in (False, True):
                try:
                    return html("report.html", request, page=pages.report_page(store, ask, then), **controls)
                except NothingMatched as error:
                    message, running = str(error), pages.running_instead(store)
                if running or second_try:
                    break
                # none running: the last one may have completed between the two reads, so report once more
        # nothing completed yet but trials running: what is running, a page that reloads (200); else a 404
        response = html("report.html", request, message=message, running=running, **controls,
                        refresh=REFRESH_S if running else None)
        response.status_code = 200 if running else 404
        return response

    def runs(request: Request) -> Response:
        page = runs_of_params(request.query_params)
        with view.open() as store:
            context = pages.runs_page(store, page, choices)
        params = request.query_params
        return html("runs.html", request, refresh=REFRESH_S if context["running"] else None, params=params,
                    sorted_by=lambda name: sorted_link(params, name), paged=lambda number: changed(params, page=number),
                    download=changed(params, page=1), study_where=[w for w in params.getlist("where") if is_study(w)],
                    other_where=[w for w in filled(params, "where") if not is_study(w)], **context)

    def download(request: Request) -> Response:
        """Every run the filters select (not one page), as `bnrun export runs` writes them, streamed."""
        fmt = request.path_params["fmt"]
        if fmt not in EXPORT_FORMATS:
            raise HTTPException(404, f"no download as {fmt[:20]!r}: runs.csv or runs.json")
        selection = replace(runs_of_params(request.query_params), page=1)
        query = selection.query
        with view.open() as store:
            pages.page_of(store, selection)  # nothing matched: a 404 before the download starts

        def chunks() -> Iterator[str]:
            with view.open() as store:
                yield from pages.export_chunks(store, query, fmt)

        media = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
        headers = {**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="runs.{fmt}"'}
        return StreamingResponse(chunks(), media_type=media, headers=headers)

    def run(request: Request) -> Response:
        known_only(request.query_params)
        with view.open() as store:
            context = pages.run_page(store, request.path_params["run_id"])
        refresh = REFRESH_S if context["run"].status == RunStatus.RUNNING else None
        return html("run.html", request, refresh=refresh, **context)

    def compare(request: Request) -> Response:
        params = request.query_params
        known_only(params, COMPARE_PARAMETERS)
        # the runs page's checkboxes send ids=11&ids=12 without a script; a link writes ids=11,12
        joined = QueryParams({"ids": ",".join(v for v in params.getlist("ids") if v.strip())}) \
            if len(params.getlist("ids")) > 1 else params
        ids = compared_ids(joined)
        with view.open() as store:
            return html("compare.html", request, **pages.compare_page(store, ids))

    def claims(request: Request) -> Response:
        known_only(request.query_params)
        with view.open() as store:
            return html("claims.html", request, **pages.claims_page(store, claims_file))

    def api_runs(request: Request) -> Response:
        page = runs_of_params(request.query_params)
        with view.open() as store:
            return json_response(pages.api_runs(store, page))

    def api_run(request: Request) -> Response:
        known_only(request.query_params)
        with view.open() as store:
            return json_response(pages.api_run(store, request.path_params["run_id"]))

    routes = [
        Route("/", report), Route("/runs", runs), Route("/runs/{run_id:int}", run), Route("/compare", compare),
        Route("/runs.{fmt:str}", download), Route("/claims", claims),
        Route("/api/runs", api_runs), Route("/api/runs/{run_id:int}", api_run),
        Route("/static/style.css", static(STATIC / "style.css")),
        Route("/static/bnrun.js", static(STATIC / "bnrun.js")),
    ]
    return Starlette(routes=routes, exception_handlers=ERRORS, middleware=[Middleware(AccessMiddleware, access=access)])


def second_option(params: QueryParams, by: str | None) -> str | None:
    """`then`: a second option whose values each get the pivot's sensitivity panels (with `by` only)."""
    then = (params.get("then") or "").strip().replace("-", "_") or None
    if then is None:
        return None
    if by is None:
        raise UsageError("then: give by=OPTION too (then=OPTION draws by's sensitivity at each of its values)")
    if then not in PIVOT_FIELDS or then == by:
        raise UsageError(f"then: {then[:40]!r} is not an option other than by={by}; choose from "
                         f"{', '.join(name for name in PIVOT_FIELDS if name != by)}")
    return then


def filled(params: QueryParams, name: str) -> list[str]:
    """A repeated parameter's non-blank values: a form sends its empty box too, which the page adds back once."""
    return [value for value in params.getlist(name) if value.strip()]


BOX_SIZE_LIMIT = 40  # characters at most: a longer value scrolls within its box
BOX_SIZE = 12  # characters a text box shows at least ('epochs=10', 'lr=0.1,0.03')


def box_size(values: list[str]) -> int:
    """A text box's width in characters: wide enough for each of `values` (those given, those suggested), up to
    BOX_SIZE_LIMIT (a longer value scrolls within its box)."""
    return min(BOX_SIZE_LIMIT, max([BOX_SIZE, *(len(value) + 1 for value in values)]))


def is_study(where: str) -> bool:
    """A `where` the study choice sets (study=NAME), not one typed."""
    return where.startswith("study=")


def changed(params: QueryParams, **values) -> str:
    """The query string with these parameters set (the others kept, repeated ones too)."""
    kept = [(key, value) for key, value in params.multi_items() if key not in values]
    return urlencode(kept + [(key, str(value)) for key, value in values.items()])


def sorted_link(params: QueryParams, name: str) -> str:
    """Sort by `name`, descending when the page is already sorted by it ascending; back to page 1."""
    current = params.get("sort", "-id")
    return changed(params, sort=f"-{name}" if current == name else name, page=1)


def static(path: Path) -> Callable[[Request], Response]:
    def serve(_request: Request) -> Response:
        return FileResponse(path, headers={"Cache-Control": "max-age=3600", **SECURITY_HEADERS})

    return serve


def json_response(payload: dict) -> JSONResponse:
    return JSONResponse(json.loads(json.dumps(payload, default=json_value)), headers=SECURITY_HEADERS)


def json_value(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    raise TypeError(f"not JSON: {type(value).__name__}")


HEADINGS = {400: "Bad request", 404: "Not found", 405: "Method not allowed", 503: "The store is unavailable"}
ERROR_PAGE = environment().get_template("error.html")


MESSAGE_LIMIT = 300  # characters of an error message a page or a JSON answer quotes


def web_wording(message: str) -> str:
    """A store or parser message in the web's words: its first line (at most MESSAGE_LIMIT characters, as a
    message may quote a long parameter), without the command-line hint."""
    line = message.splitlines()[0] if message else ""
    line = line.split("; list them with: bnrun runs")[0]
    return line if len(line) <= MESSAGE_LIMIT else line[:MESSAGE_LIMIT - 1] + "…"


def run_not_found(request: Request, error: RunNotFound) -> Response:
    """404 naming the ids, not the store: a page served beyond this machine does not show where its store lies."""
    return error_response(request, 404, f"no run with id {', '.join(error.missing)}" if error.missing else str(error))


def error_response(request: Request, status: int, message: str) -> Response:
    """An error as the client reads it: JSON ({"error", "status"}) under /api/, else a page in the site's
    layout with a way back; the status code says what went wrong either way."""
    text = web_wording(message)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": text, "status": status}, status_code=status, headers=SECURITY_HEADERS)
    body = ERROR_PAGE.render(status=status, heading=HEADINGS.get(status, "Error"), message=text)
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def http_error(request: Request, error: HTTPException) -> Response:
    return error_response(request, error.status_code, error.detail or "")


ERRORS = {
    HTTPException: http_error,
    UsageError: lambda request, error: error_response(request, 400, str(error)),
    NothingMatched: lambda request, error: error_response(request, 404, str(error)),
    RunNotFound: run_not_found,
    StoreError: lambda request, error: error_response(request, 503, str(error)),  # gone, damaged or unreachable
}
