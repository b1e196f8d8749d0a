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
        assert 'class="figure-data"' in response.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", response.text), "a page refers to the network"


def test_plotly_is_served_from_the_installed_package(client):
    response = client.get("/static/plotly.min.js")
    assert response.status_code == 200 and len(response.content) > 1_000_000
    assert client.get("/static/bnrun.js").status_code == 200 and client.get("/static/style.css").status_code == 200


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
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=""", html), "the report loads a file"
    assert "Plotly.newPlot" in html and html.count('<script type="application/json" class="figure-data"') == 2
    assert "Holm p" in html and unescape(report_json(study)["comparisons"][0]["a"]) in unescape(html)


def test_only_a_loopback_address_goes_without_a_warning():
    loopback = access_for("127.0.0.1")
    assert exposure_warning("127.0.0.1", loopback) is None and exposure_warning("localhost", loopback) is None
    assert "token" in exposure_warning("0.0.0.0", access_for("0.0.0.0"))
    assert "anyone" in exposure_warning("0.0.0.0", access_for("0.0.0.0", require_token=False))


def test_the_server_listens_beyond_loopback_only_with_its_token(study):
    """A real `bnrun ui` process on every interface: its warning, the URL with a token; a request without
    the token is 401, with it 200 (and a cookie that serves the next request), a rebound Host 400."""
    import httpx

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
