"""`bnrun ui` in-process (Starlette's TestClient over the real app and a copy of the shipped store):
every route, the report's numbers against `bnrun report --format json`, pages of runs against the
CLI's listing, escaping, read-only browsing, error codes; `bnrun report --format html`; a real server."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
from dataclasses import asdict
from html import unescape

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from bnrun.analysis.listing import RunQuery, select_runs
from bnrun.cli import app as cli
from bnrun.errors import StoreError
from bnrun.requests.parsing import FilterOptions
from bnrun.store import Store
from bnrun.web.access import access_for
from bnrun.web.app import create_app
from bnrun.web.server import exposure_warning
from conftest import SHIPPED, bnrun_command, free_port

NOTE = '<script>alert("x")</script>'
runner = CliRunner()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A copy of the shipped store, only read by these tests."""
    copy = tmp_path_factory.mktemp("web") / "study.db"
    shutil.copyfile(SHIPPED, copy)
    return copy


@pytest.fixture(scope="module")
def client(study):
    return TestClient(create_app(str(study)), base_url="http://localhost")


@pytest.fixture
def labelled(study, tmp_path):
    """A writable copy whose run 12 carries a hostile note and tag-free HTML, and one running trial."""
    copy = tmp_path / "labelled.db"
    shutil.copyfile(study, copy)
    store = Store(str(copy), reap=False)
    store.label_runs([12], note=NOTE)
    run = store.get_run(12)
    fields = {**asdict(run), "status": "running", "claim": None, "epochs_completed": 2, "ended_at": None,
              "pid": 1, "host": "elsewhere"}
    fields.pop("id")
    running = store.add_ended_runs([(fields, store.epochs(12)[:2])])[0]
    store.close()
    return copy, running


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("url", ["/", "/runs", "/runs/12", "/compare?ids=11,12", "/?by=lr", "/?where=lr=0.1",
                                 "/runs?sort=-test_acc_population&arch=cnn&page=2&per_page=5"])
def test_every_page_renders_with_its_figures(client, url):
    response = client.get(url)
    assert response.status_code == 200, response.text
    assert "text/html" in response.headers["content-type"]
    assert "default-src 'self'" in response.headers["content-security-policy"]
    if url != "/runs" and not url.startswith("/runs?"):
        assert '<figure class="chart"' in response.text and "<svg" in response.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", response.text), "a page refers to the network"


def test_the_figures_are_drawn_by_the_server_and_the_assets_are_small(client):
    """No charting library: the figures are inline SVG; the page's own script and style are a few kilobytes."""
    for url in ("/", "/runs/12", "/?by=lr"):
        assert "plotly" not in client.get(url).text.lower(), url
    assert client.get("/static/plotly.min.js").status_code == 404
    for asset in ("/static/bnrun.js", "/static/style.css"):
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) < 10_000, asset


def report_json(db, *args: str) -> dict:
    result = runner.invoke(cli, ["report", "--format", "json", "--db", str(db), *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("query, args", [("", ()), ("?where=lr=0.1&metric=best_val_acc", ("--where", "lr=0.1", "--metric",
                                                                                             "best_val_acc")),
                                          ("?arch=mlp&all=", ("--arch", "mlp"))])
def test_the_report_page_shows_the_json_reports_numbers(client, study, query, args):
    expected = report_json(study, *args)
    html = client.get("/" + query).text
    metric = expected["metric"]
    assert re.findall(r'data-run-ids="([^"]*)"', html) == [",".join(map(str, g["run_ids"])) for g in expected["groups"]]
    assert [float(v) for v in re.findall(r'data-mean="([^"]*)"', html)] == [g[f"{metric}_mean"] for g in expected["groups"]]
    shown = {name: re.findall(rf'data-{name}="([^"]*)"', html) for name in ("mean-diff", "ci-low", "p-holm", "n")}
    comparisons = expected["comparisons"]
    assert len(shown["n"]) == len(comparisons) > 0
    for index, c in enumerate(comparisons):
        assert shown["mean-diff"][index] == repr(c["mean_diff"]) or float(shown["mean-diff"][index]) == c["mean_diff"]
        assert shown["ci-low"][index] == str(c["ci95_low"])
        assert shown["p-holm"][index] == str(c["p_holm"])
        assert int(shown["n"][index]) == c["n"]


def test_the_pivot_page_shows_the_json_pivots_means(client, study):
    expected = report_json(study, "--by", "lr")
    html = client.get("/?by=lr").text
    means = sorted(float(v) for v in re.findall(r'<td class="number" data-mean="([^"]*)"', html) if v != "None")
    assert means == sorted(cell["mean"] for cell in expected["cells"] if cell["mean"] is not None)
    assert 'by lr' in html


@pytest.mark.parametrize("filters, status, sort", [
    (FilterOptions(), None, "-id"),
    (FilterOptions(arch="cnn", where=("lr=0.1,0.03",)), "completed", "-test_acc_population"),
    (FilterOptions(bn_impl="custom+fused", run_id="1-200"), None, "duration_s"),
    (FilterOptions(bn_impl="torch,custom", since="2020-01-01"), None, "-best_val_acc"),
])
def test_a_page_of_runs_is_the_cli_listings_slice(study, filters, status, sort):
    """Filtered, sorted and cut by the database, each page equals the CLI's listing (filtered in Python) sliced."""
    from bnrun.web.pages import page_arguments

    query = RunQuery(filters.run_filter(), statuses=(status,) if status else (), sort=sort)
    store = Store(str(study), read_only=True)
    try:
        expected = [run.id for run in select_runs(store.list_runs(), query)]
        pages = [store.page_runs(**page_arguments(query), limit=7, offset=offset)
                 for offset in range(0, len(expected) + 7, 7)]
    finally:
        store.close()
    assert expected and all(page.total == len(expected) for page in pages)
    assert [run.id for page in pages for run in page.runs] == expected


def test_the_json_api_is_export_runs(client, study):
    result = runner.invoke(cli, ["export", "runs", "--format", "json", "--arch", "cnn", "--sort", "-id", "--db",
                                 str(study)])
    exported = json.loads(result.stdout)
    page = client.get("/api/runs?arch=cnn&per_page=500").json()
    assert page["total"] == len(exported) and page["runs"] == exported
    one = client.get("/api/runs/12").json()
    assert {k: v for k, v in one.items() if k != "per_epoch"} == next(r for r in exported if r["id"] == 12)
    assert [e["epoch"] for e in one["per_epoch"]] == list(range(1, one["epochs"] + 1))


def test_a_report_parameter_that_is_refused_gives_the_form_back_as_submitted(client):
    """The form's mistake (where=epoch=10) answered with a bare error page: its values had to be typed again."""
    response = client.get("/", params={"where": "epoch=10", "metric": "best_val_acc"})
    assert response.status_code == 400 and 'class="error"' in response.text
    assert "unknown option &#39;epoch&#39;; did you mean epochs" in response.text
    form = re.search(r'<form method="get" action="/".*?</form>', response.text, flags=re.S).group(0)
    assert 'value="epoch=10"' in form and '<option value="best_val_acc" selected>' in form


def test_unknown_ids_and_methods_and_parameters_are_refused_as_error_pages(client):
    cases = {"/runs/999999": 404, "/api/runs/999999": 404, "/runs/abc": 404, "/nowhere": 404, "/?metric=bogus": 400,
             "/?by=colour": 400, "/runs?page=0": 400, "/runs?per_page=9999": 400, "/runs?sort=gen_gap": 400,
             "/runs?sort=nonsense": 400, "/compare?ids=x": 400, "/compare?ids=11": 400, "/compare": 400,
             "/compare?ids=11,999999": 404, "/?since=yesterday": 400, "/?where=lr": 400}
    for url, status in cases.items():
        response = client.get(url)
        assert response.status_code == status, (url, response.text)
        assert "Traceback" not in response.text and "bnrun runs" not in response.text, url
        if url.startswith("/api/"):
            assert response.json()["status"] == status and response.json()["error"], url
        else:  # a page in the site's layout, with a way back
            assert "<nav>" in response.text and 'href="/runs"' in response.text and 'class="error"' in response.text, url
    for method in ("post", "put", "delete", "patch"):
        for url in ("/", "/runs", "/runs/12", "/api/runs/12"):
            assert getattr(client, method)(url).status_code == 405, (method, url)


@pytest.mark.parametrize("url,status,message", [
    ("/?foo=bar", 400, "unknown parameter 'foo'; this page takes arch, bn, bn_impl, run_id, since, where"),
    ("/runs?claim=cnn-placement", 400, "unknown parameter 'claim'; this page takes arch"),
    ("/api/runs?arch=cnn&limit=1", 400, "unknown parameter 'limit'"),
    ("/runs?pagee=2", 400, "unknown parameter 'pagee'; did you mean page?"),
    ("/claims?family=depth", 400, "unknown parameter 'family'; this page takes none"),
    ("/runs/12?x=1", 400, "this page takes none"),
    ("/compare?ids=11,11", 400, "ids: run 11 given twice: name two different runs"),
    ("/compare?ids=11", 400, "ids: compare 2 to 12 runs, got 1"),
    ("/compare?ids=11,12&ids=13&b=1", 400, "unknown parameter 'b'; this page takes ids"),
    ("/runs?per_page=0", 400, "per_page: expected a whole number, 1 or more, got '0'"),
    ("/runs?per_page=100000", 400, "per_page: at most 500, got 100000"),
    ("/runs?page=0", 400, "page: expected a whole number, 1 or more, got '0'"),
    ("/runs?sort=--id", 400, "unknown field '-id'"),
    ("/runs?deleted=maybe", 400, "deleted: expected 1 or 0 (true or false), got 'maybe'"),
    ("/runs/999999", 404, "no run with id 999999"),
    ("/api/runs/999999", 404, "no run with id 999999"),
])
def test_a_bad_parameter_is_named_in_the_error_and_the_store_path_is_not(client, study, url, status, message):
    response = client.get(url)
    assert response.status_code == status, (url, response.text)
    text = response.json()["error"] if url.startswith("/api/") else unescape(response.text)
    assert message in text, (url, text)
    assert str(study) not in text and study.name not in text, url


def test_switches_take_yes_and_no_and_a_long_value_is_cut_in_the_error(client):
    assert client.get("/runs?deleted=yes").status_code == 200 and client.get("/runs?deleted=no").status_code == 200
    response = client.get("/?where=" + "x" * 3000)
    error = re.search(r'<p class="error">(.*?)</p>', response.text, flags=re.S).group(1)
    assert response.status_code == 400 and "x" * 400 not in error and error.endswith("…")
    assert 'value="' + "x" * 3000 + '"' in response.text and 'size="40"' in response.text  # the form, as submitted


def test_a_filter_that_matches_nothing_keeps_the_form(client):
    response = client.get("/?where=lr=0.123456")
    assert response.status_code == 404
    assert "no completed trial matches" in response.text and '<form method="get"' in response.text


def test_user_text_is_escaped_and_a_running_trial_refreshes_the_listing(labelled):
    db, running = labelled
    client = TestClient(create_app(str(db)), base_url="http://localhost")
    for url in ("/runs", "/runs/12", "/api/runs/12"):
        body = client.get(url).text
        assert NOTE not in body, url
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in client.get("/runs/12").text
    listing = client.get("/runs").text
    assert '<meta http-equiv="refresh"' in listing and f'<a href="/runs/{running}">' in listing
    row = listing[listing.index(f'<a href="/runs/{running}">'):].split("</tr>")[0]
    assert "running" in row and ">2/" in row
    assert '<meta http-equiv="refresh"' not in client.get("/runs?status=completed").text


def test_browsing_changes_nothing_and_creates_nothing(study):
    before, files = sha256(study), sorted(study.parent.iterdir())
    client = TestClient(create_app(str(study)), base_url="http://localhost")
    for url in ("/", "/?by=lr", "/runs", "/runs?page=3", "/runs/12", "/compare?ids=11,12", "/api/runs", "/runs/999999"):
        client.get(url)
    client.post("/runs")
    assert sha256(study) == before and sorted(study.parent.iterdir()) == files


def test_a_missing_store_is_one_line_exit_2_and_never_created(tmp_path):
    missing = tmp_path / "none.db"
    with pytest.raises(StoreError, match="no store at"):
        create_app(str(missing))
    result = runner.invoke(cli, ["ui", "--db", str(missing)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not missing.exists() and not list(tmp_path.iterdir())


def test_html_report_is_one_self_contained_file(study, tmp_path):
    output = tmp_path / "report.html"
    result = runner.invoke(cli, ["report", "--format", "html", "--output", str(output), "--db", str(study)])
    assert result.exit_code == 0, result.output
    html = output.read_text()
    assert output.stat().st_size < 1_500_000, output.stat().st_size
    assert not re.search(r"""<(script|link|img|iframe)[^>]+(src|href)=""", html), "the report loads a file"
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the report refers to the network"
    assert "<script" not in html and html.count('<figure class="chart" data-kind="curves">') == 2
    assert "Holm p" in html and unescape(report_json(study)["comparisons"][0]["a"]) in unescape(html)
    assert "<h2>Diagnostics</h2>" in html and "largest η with r(η) &lt; 1 at init" in html  # the diagnostics table
    assert 'data-kind="diagnostic"' in html  # and their figures
    assert "bold: per architecture, the group with the best mean test acc. (population stats)" in html


def test_only_a_loopback_address_goes_without_a_warning():
    loopback = access_for("127.0.0.1")
    assert exposure_warning("127.0.0.1", loopback) is None and exposure_warning("localhost", loopback) is None
    assert "token" in exposure_warning("0.0.0.0", access_for("0.0.0.0"))
    assert "anyone" in exposure_warning("0.0.0.0", access_for("0.0.0.0", require_token=False))


def test_the_server_listens_beyond_loopback_only_with_its_token(study):
    """A real `bnrun ui` process on every interface: its warning, the URL with a token; a request without
    the token is 401, with it 200 (and a cookie that serves the next request), a rebound Host 400."""
    import httpx2 as httpx

    port = free_port()
    process = subprocess.Popen(bnrun_command("ui", "--db", str(study), "--host", "0.0.0.0", "--port", str(port)),
                               stderr=subprocess.PIPE, text=True)
    try:
        assert "token" in process.stderr.readline()
        served = process.stderr.readline()
        assert "serving the store read-only" in served
        token = re.search(r"\?token=([A-Za-z0-9_-]+)", served).group(1)
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                refused = httpx.get(f"{base}/runs", timeout=10)
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert refused.status_code == 401 and "token" in refused.text
        with httpx.Client(base_url=base, timeout=10) as browser:
            response = browser.get("/runs", params={"token": token})
            assert response.status_code == 200 and "Runs" in response.text
            assert browser.get("/api/runs").status_code == 200  # the cookie carries the token
            assert browser.post("/runs").status_code == 405
            assert browser.get("/runs", headers={"Host": f"rebind.example:{port}"}).status_code == 400
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_runs_shows_values_as_the_cli_does_and_compare_shows_the_seeds(client):
    page = client.get("/runs", params={"per_page": 500}).text
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", page)
    assert cells and not {"None", "True", "False"} & {cell.strip() for cell in cells}
    compared = client.get("/compare", params={"ids": "11,12"}).text
    assert re.search(r"<th>seed</th><td>1</td><td>2</td>", compared)


def test_runs_spells_the_implementation_of_a_run_without_bn_as_the_report_does(client):
    """bn=none runs store bn_impl's default (custom), but there is no BN, so no implementation: —."""
    page = client.get("/runs", params={"run_id": "1-40"}).text
    head = re.findall(r"<th[^>]*>(?:<a [^>]*>)?([^<]*)", re.search(r"<thead>(.*?)</thead>", page, flags=re.S).group(1))
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row)
            for row in re.findall(r'<tr class="status-[^"]*">(.*?)</tr>', page, flags=re.S)]
    impls = {(row[head.index("bn")], row[head.index("impl")]) for row in rows}
    assert {impl for bn, impl in impls if bn == "none"} == {"—"}
    assert "—" not in {impl for bn, impl in impls if bn != "none"} and ("pre", "custom+fused") in impls
    report = client.get("/", params={"arch": "mlp", "bn": "none"}).text
    assert re.search(r'<td class="label">mlp</td><td class="label">none</td><td class="label">—</td>', report)


# -- the figures --------------------------------------------------------------------------------------------------

def figures_of(html: str) -> list[str]:
    return re.findall(r'<figure class="chart".*?</figure>', html, flags=re.S)


def panel_titles(figure: str) -> list[str]:
    return re.findall(r'<text [^>]*class="title"[^>]*>([^<]*)</text>', figure)


def y_ticks(panel: str) -> list[float]:
    return [float(v) for v in re.findall(r'<text [^>]*text-anchor="end"[^>]*>([^<]*)</text>', panel)]


def test_the_report_draws_a_panel_per_architecture_and_metric_with_bands(client):
    html = client.get("/").text
    curves = [f for f in figures_of(html) if 'data-kind="curves"' in f]
    titles = [panel_titles(f) for f in curves]
    assert titles == [["CNN: validation accuracy (%)", "CNN: training loss"],
                      ["MLP: validation accuracy (%)", "MLP: training loss"]]
    for figure in curves:
        assert figure.count('class="band"') >= 8  # a shaded ±std band per group and panel
        assert "error_y" not in figure
        legend = re.search(r'<ul class="legend">(.*?)</ul>', figure, flags=re.S).group(1)
        assert "<svg class=\"panel\"" not in legend  # the legend is beside the panels, never over an axis


def line_styles(figure: str) -> dict[str, tuple[str, str]]:
    """{legend label: (colour, dash)} from the legend's swatches."""
    entries = re.findall(r'<li><svg class="swatch".*?stroke="([^"]+)" stroke-width="2"\s*(?:stroke-dasharray="([^"]*)")?'
                         r'.*?</svg> ([^<]+)</li>', figure)
    return {label.split(" (n=")[0]: (color, dash) for color, dash, label in entries}


def test_one_hue_per_placement_and_one_dash_per_implementation(client):
    styles = {}
    for figure in figures_of(client.get("/").text)[:2]:
        styles.update(line_styles(unescape(figure)))
    assert {"bn=pre (custom+fused)", "bn=post (torch)", "bn=none"} <= set(styles)
    hue = lambda bn: {color for label, (color, _) in styles.items() if label.startswith(f"bn={bn}")}
    dash = lambda impl: {d for label, (_, d) in styles.items() if f"({impl})" in label}
    assert len(hue("pre")) == len(hue("post")) == len(hue("none")) == 1 and len(hue("pre") | hue("post") | hue("none")) == 3
    assert len(dash("custom+fused")) == len(dash("torch")) == 1 and dash("custom+fused") != dash("torch")


def test_the_report_page_draws_the_diagnostics_it_summarizes(client):
    html = client.get("/").text
    kinds = re.findall(r'<figure class="chart" data-kind="(\w+)"', html)
    assert kinds.count("diagnostic") == 4  # loss ratio, mode gap, smoothness, gradient norm
    assert "<h2>Diagnostics</h2>" in html and "β-smoothness, last epoch" in html


def test_a_runs_page_draws_its_diagnostics(client):
    html = client.get("/runs/12").text
    figures = figures_of(html)
    kinds = [re.search(r'data-kind="(\w+)"', f).group(1) for f in figures]
    assert len(figures) >= 3 and kinds.count("diagnostic") >= 3
    titles = [t for f in figures for t in panel_titles(f)]
    assert {"one-step loss ratio at initialization", "mode gap per epoch", "gradient norm per layer"} <= set(titles)
    assert "x = 0.0031622776601683794" not in html and "<details><summary>the" in html  # the raw values folded away


def test_the_sensitivity_figure_keeps_chance_out_of_its_y_range_and_marks_divergence(client):
    html = unescape(client.get("/", params={"by": "lr", "arch": "mlp"}).text)
    sensitivity, grid = (f for f in figures_of(html) if re.search(r'data-kind="(sensitivity|grid)"', f))
    for figure in (sensitivity, grid):
        panel = re.search(r'<svg class="panel".*?</svg>', figure, flags=re.S).group(0)
        assert min(y_ticks(panel)) >= 80, y_ticks(panel)  # lr=3's 10 % is a mark, not a point on the axis
        assert 'class="mark diverged"' in panel and 'class="mark chance"' in panel
        assert "mlp none" not in figure and "—" not in re.search(r'<ul class="legend">(.*?)</ul>', figure,
                                                                 flags=re.S).group(1)
    assert "lr=3: at chance level" in sensitivity
    assert "bn=pre (custom+fused)" in sensitivity and "bn=none" in sensitivity


def test_marks_stand_at_their_own_value_stacked_where_several_share_it(client):
    """A diverged or chance mark is drawn exactly above its value's tick (side by side, they had read as other
    learning rates on a log axis); marks at one value stand one above the other, each with its count beside it."""
    html = unescape(client.get("/", params={"by": "lr", "arch": "mlp"}).text)
    sensitivity = next(f for f in figures_of(html) if 'data-kind="sensitivity"' in f)
    panel = re.search(r'<svg class="panel".*?</svg>', sensitivity, flags=re.S).group(0)
    ticks = {name: float(x) for x, name in
             re.findall(r'<text x="([\d.]+)" y="[\d.]+" font-size="10" text-anchor="middle">([^<]*)</text>', panel)}
    marks = re.findall(r'<g class="mark \w+"><title>([^:]*):[^<]*</title>.*?<text x="([\d.]+)" y="([\d.]+)"', panel)
    assert sorted(value for value, _, _ in marks) == ["1", "3", "3", "3"], marks
    for value, x, _ in marks:
        assert float(x) - 7 == pytest.approx(ticks[value], abs=0.11)  # the count starts 7 px right of the mark
    assert len({y for value, _, y in marks if value == "3"}) == 3


def test_the_grid_view_opens_each_trial(client, study):
    html = client.get("/", params={"by": "lr", "arch": "mlp"}).text
    grid = next(f for f in figures_of(html) if 'data-kind="grid"' in f)
    linked = {int(n) for n in re.findall(r'<a href="/runs/(\d+)"><circle', grid)}
    expected = {cell["run_ids"][i] for cell in report_json(study, "--by", "lr", "--arch", "mlp")["cells"]
                for i in range(len(cell["run_ids"]))}
    assert linked and linked <= expected


# -- runs: picking, filters, downloads ----------------------------------------------------------------------------

def test_runs_offers_the_stores_values_as_choices(client):
    html = client.get("/runs").text
    options = lambda name: re.findall(r'<option value="([^"]*)"', re.search(
        rf'<select name="{name}">(.*?)</select>', html, flags=re.S).group(1))
    assert options("arch") == ["", "cnn", "mlp"] and options("bn") == ["", "none", "post", "pre"]
    assert {"completed", "interrupted"} <= set(options("status"))
    assert {"custom+fused", "torch"} <= set(options("bn_impl"))
    assert "study=headline-mlp" in re.search(r'study <select name="where">(.*?)</select>', html, flags=re.S).group(1)
    assert "(0 matching)" in client.get("/runs", params={"arch": "cnn", "where": "study=headline-mlp"}).text
    chosen = client.get("/runs", params={"arch": "mlp", "where": "study=headline-mlp"}).text
    assert '<option value="study=headline-mlp" selected>' in chosen and '<option value="mlp" selected>' in chosen


def test_runs_has_a_selection_that_leads_to_compare(client):
    html = client.get("/runs").text
    assert '<form method="get" action="/compare" id="pick"' in html
    boxes = re.findall(r'<input type="checkbox" name="ids" value="(\d+)" form="pick"', html)
    assert len(boxes) == 50
    picked = client.get("/compare", params=[("ids", boxes[0]), ("ids", boxes[1])])  # the form without a script
    assert picked.status_code == 200 and f"Compare runs {boxes[1]}, {boxes[0]}" in picked.text
    assert client.get("/compare", params=[("ids", "11"), ("ids", "")]).status_code == 400


def compared_differences(html: str) -> tuple[list[str], dict[str, list[str]]]:
    """The final metrics' difference columns: their heads, and each metric's differences."""
    table = re.search(r"<h2>Final metrics</h2>.*?</table>", html, flags=re.S).group(0)
    body = table.split("<tbody>")[1]
    heads = re.findall(r'<th class="difference">([^<]*)</th>', table)
    rows = re.findall(r"<tr><th>([^<]*)</th>(.*?)</tr>", body)
    return heads, {label: re.findall(r'<td class="number difference">([^<]*)</td>', cells) for label, cells in rows}


def test_compare_shows_the_differences_bnrun_compare_prints(client, study):
    heads, differences = compared_differences(client.get("/compare", params={"ids": "11,12"}).text)
    printed = runner.invoke(cli, ["compare", "11", "12", "--db", str(study)], env={"COLUMNS": "80"})
    assert printed.exit_code == 0, printed.output
    assert heads == ["12 − 11"] and "12 − 11" in printed.stdout
    lines = {line.strip().split("  ")[0]: line.rstrip() for line in printed.stdout.splitlines()}
    assert len(differences) == 8 and differences["test acc. (population)"] == ["−0.05 pp"]
    for label, (text,) in differences.items():
        assert lines[label].endswith(" " + text), (label, text)


def test_compare_of_more_runs_gives_each_ones_difference_from_the_first(client):
    html = client.get("/compare", params={"ids": "13,11,12"}).text
    heads, differences = compared_differences(html)
    assert heads == ["12 − 11", "13 − 11"] and "each run minus the first, run 11" in html
    assert all(len(texts) == 2 for texts in differences.values())


def test_compare_colours_each_run(client):
    html = client.get("/compare", params={"ids": "11,12"}).text
    for figure in figures_of(html):
        styles = line_styles(unescape(figure))
        assert set(styles) == {"run 11", "run 12"} and styles["run 11"][0] != styles["run 12"][0]


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_the_selection_downloads_as_export_runs_writes_it(client, study, fmt):
    args = ["export", "runs", "--format", fmt, "--arch", "mlp", "--status", "completed", "--sort", "-id", "--db", str(study)]
    expected = runner.invoke(cli, args).stdout
    response = client.get(f"/runs.{fmt}", params={"arch": "mlp", "status": "completed", "page": 3})
    assert response.status_code == 200 and "attachment" in response.headers["content-disposition"]
    if fmt == "json":
        assert json.loads(response.text) == json.loads(expected) and len(json.loads(expected)) > 50  # not one page
    else:
        assert response.text == expected
    assert client.get("/runs.xml").status_code == 404 and client.get("/runs.csv", params={"arch": "rnn"}).status_code == 400


def test_runs_fits_its_dates(client):
    html = client.get("/runs").text
    assert re.search(r'<td class="number" title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d">\d\d-\d\d \d\d:\d\d</td>', html)


# -- a live store ---------------------------------------------------------------------------------------------------

def test_a_running_runs_page_shows_its_epochs_so_far_and_reloads(labelled):
    db, running = labelled
    client = TestClient(create_app(str(db)), base_url="http://localhost")
    response = client.get(f"/runs/{running}")
    assert response.status_code == 200
    assert '<meta http-equiv="refresh"' in response.text and "epoch 2/10" in response.text
    assert len(re.findall(r'<table class="epochs">.*?</table>', response.text, flags=re.S)[0].split("<tr>")) == 2 + 2
    assert '<figure class="chart" data-kind="curves">' in response.text


def test_the_report_of_a_store_with_nothing_completed_says_what_runs(study, tmp_path):
    db = tmp_path / "fresh.db"
    source = Store(str(study), read_only=True)
    run, epochs = source.get_run(12), source.epochs(12)[:1]
    source.close()
    store = Store(str(db), reap=False)
    fields = {**asdict(run), "status": "running", "claim": None, "epochs_completed": 1, "ended_at": None}
    fields.pop("id")
    (running,) = store.add_ended_runs([(fields, epochs)])
    store.close()
    client = TestClient(create_app(str(db)), base_url="http://localhost")
    response = client.get("/")
    assert response.status_code == 200 and "Running now" in response.text
    assert f'<a href="/runs/{running}">' in response.text and '<meta http-equiv="refresh"' in response.text
    assert client.get(f"/runs/{running}").status_code == 200
    assert client.get("/", params={"arch": "mlp"}).status_code == 200  # still nothing completed anywhere


# -- claims ---------------------------------------------------------------------------------------------------------

def test_the_claims_page_is_bnrun_claims(study):
    from pathlib import Path

    from bnrun.analysis.claims import evaluate, load_claims, result_record
    from conftest import REPO

    claims_file = REPO / "study" / "claims.toml"
    store = Store(str(study), read_only=True)
    try:
        records = [result_record(r) for r in evaluate(store, load_claims(claims_file))]
    finally:
        store.close()
    client = TestClient(create_app(str(study), claims_file=claims_file), base_url="http://localhost")
    html = client.get("/claims").text
    rows = re.findall(r'<tr id="([^"]+)" class="verdict-(\w+)">', html)
    assert rows == [(r["id"], r["verdict"]) for r in records]
    first = next(r for r in records if r["run_ids"])
    assert "evidence: commit" in html and 'href="/runs?run_id=' in html
    assert f'{len(first["run_ids"])} runs</a>' in html
    missing = TestClient(create_app(str(study), claims_file=Path("/nonexistent/claims.toml")), base_url="http://localhost")
    assert "no such file" in missing.get("/claims").text


def test_the_choices_follow_the_store_as_runs_are_added(labelled):
    db, _ = labelled
    client = TestClient(create_app(str(db)), base_url="http://localhost")
    assert "study=fresh-study" not in client.get("/runs").text
    store = Store(str(db), reap=False)
    fields = {**asdict(store.get_run(11)), "study": "fresh-study", "claim": None}
    fields.pop("id")
    store.add_ended_runs([(fields, store.epochs(11))])
    store.close()
    assert '<option value="study=fresh-study">' in client.get("/runs").text  # the same view, read again


@pytest.mark.parametrize("by", ["lr", "weight_decay", "batch_size", "bn_impl", "augment", "schedule", "train_subset",
                                "depth", "init", "ghost_batch", "study"])
def test_a_pivot_by_any_option_draws_its_figures(client, by):
    """Numbers on a linear or log axis (a 0 among them is no point on a log one), flags and names as categories,
    unset values as their own category or none."""
    for query in ({"by": by}, {"by": by, "all": "1"}, {"by": by, "metric": "train_loss", "arch": "cnn"}):
        response = client.get("/", params=query)
        assert response.status_code in (200, 404), (query, response.text[:300])
        if response.status_code == 200:
            assert 'data-kind="sensitivity"' in response.text and 'data-kind="grid"' in response.text


def test_an_svg_panel_skips_what_its_scales_cannot_place():
    from bnrun.web.svg import Figure, Line, Mark, Panel, Style, figure_html

    style = Style("#123456")
    line = Line("a", style, (0.0, 0.01, 0.1, float("nan")), (1.0, None, 3.0, 4.0), (0.5, 1.0, 2.0, 3.0),
                (1.5, 1.0, 4.0, 5.0))
    panel = Panel("t<&>", "x", "y", (line,), (Mark(0.0, "diverged", "1/3", "#000"),), x_log=True, y_log=True,
                  x_ticks=(0.0, 0.01, 0.1))
    html = figure_html(Figure("f", (panel,), (("a", style),), "grid", marks_legend=("diverged",)))
    assert "t&lt;&amp;&gt;" in html and "nan" not in html.lower() and html.count('class="point"') == 1  # only (0.1, 3)


def test_a_figure_of_more_lines_than_can_be_told_apart_says_so(client):
    for query in ({"by": "batch_size", "all": "1"}, {"all": "1"}):
        html = client.get("/", params=query).text
        assert "not drawn:" in html and "at most 12 can be told apart" in html, query
        assert "<svg class=\"panel\"" not in html


def test_the_reports_filters_offer_the_stores_values(client):
    html = client.get("/").text
    listed = lambda name: re.findall(r'<option value="([^"]*)">', re.search(
        rf'<datalist id="report-{name}">(.*?)</datalist>', html, flags=re.S).group(1))
    assert listed("arch") == ["cnn", "mlp"] and listed("bn") == ["none", "post", "pre"]
    assert "study=headline-mlp" in listed("where")
    assert '<datalist id="report-arch">' in client.get("/", params={"where": "lr=0.123456"}).text  # on a 404 too


def test_the_report_form_shows_the_filled_where_boxes_and_one_empty_one_wide_enough(client):
    """A submitted form sends its empty box (where=): the page shows each value given, then one empty box,
    each wide enough for the longest study the list suggests."""
    html = client.get("/", params=[("where", "study=headline-mlp"), ("where", "")]).text
    boxes = re.findall(r'<input name="where" value="([^"]*)" placeholder="epochs=10" size="(\d+)"', html)
    assert [value for value, _ in boxes] == ["study=headline-mlp", ""]
    assert all(int(size) > len("study=placement-robust") for _, size in boxes)


def test_the_pivots_at_a_second_options_values_hold_the_first_pivots_recipe():
    """then=batch_size drew batch sizes 16 and 32 from study=placement-robust, beside a pivot of the default
    recipe at epochs=10: each panel chose its own largest recipe."""
    from starlette.datastructures import QueryParams

    from bnrun.analysis.queries import pivot_of
    from bnrun.web import pages
    from bnrun.web.params import report_of_params

    store = Store(str(SHIPPED), read_only=True)
    request = report_of_params(QueryParams("by=lr&arch=mlp"))
    pivot = pivot_of(store, request)
    runs = store.get_runs([run_id for row in pivot.rows for cell in row.cells.values() for run_id in cell.run_ids])
    beside = pages.pivots_at(store, request, "batch_size", pages.shared_recipe(runs, ("lr", "batch_size")))
    store.close()
    assert len(beside) == 6 and pivot.held == {"epochs": 10}
    assert all({k: v for k, v in other.held.items() if k != "batch_size"} == pivot.held for _, other in beside)


def test_a_second_option_draws_the_sensitivity_at_each_of_its_values(client):
    html = unescape(client.get("/", params={"by": "lr", "then": "batch_size", "arch": "mlp"}).text)
    figure = next(f for f in figures_of(html) if "a panel per batch_size" in f)
    titles = panel_titles(figure)
    assert titles[:2] == ["MLP, batch_size=16", "MLP, batch_size=32"] and "MLP, batch_size=128" in titles
    panels = re.findall(r'<svg class="panel".*?</svg>', figure, flags=re.S)
    assert len({tuple(y_ticks(panel)) for panel in panels}) == 1  # one y range for all of them
    assert "off the default recipe: epochs=10" in figure and "batch_size=16</p>" not in figure
    for query, status in (({"then": "lr"}, 400), ({"by": "lr", "then": "lr"}, 400), ({"by": "lr", "then": "x"}, 400)):
        assert client.get("/", params=query).status_code == status, query


def test_runs_names_what_every_run_on_the_page_shares_and_heads_each_column_once(client):
    page = client.get("/runs", params={"arch": "cnn", "per_page": 5}).text
    assert "all on this page: arch=cnn" in page
    headers = re.findall(r"<th[^>]*>(?:<a [^>]*>)?([^<]+)", page.split("<thead>")[1].split("</thead>")[0])
    assert len(headers) == len(set(headers)), headers
