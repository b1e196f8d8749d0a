"""`bnrun ui` in a real headless chromium (Debian's, driven by Playwright), every request outside
127.0.0.1 aborted: every page's figures render (SVG panels with their lines), no console error; the filters,
the click-to-compare flow and the issue's acceptance list in the browser; the HTML report opened from disk
loads nothing; the screenshots in docs/ show the shipped store. Marked `browser`."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from bnrun.store import Store
from conftest import REPO, SHIPPED, bnrun_command, free_port

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.browser]


class Base(str):
    """The server's base URL, with the id of its running trial and its store's path."""

    def __new__(cls, url: str, running: int, store: Path):
        made = super().__new__(cls, url)
        made.running, made.store = running, store
        return made


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`bnrun ui` on a copy of the shipped store, at a free port; its base URL."""
    import httpx2 as httpx

    study = tmp_path_factory.mktemp("browser") / "study.db"
    shutil.copyfile(SHIPPED, study)
    store = Store(str(study), reap=False)  # one trial running, two epochs in, as a live store has
    fields = {**asdict(store.get_run(12)), "status": "running", "claim": None, "epochs_completed": 2,
              "ended_at": None, "pid": 1, "host": "elsewhere"}
    fields.pop("id")
    running = store.add_ended_runs([(fields, store.epochs(12)[:2])])[0]
    store.close()
    port = free_port()
    process = subprocess.Popen(bnrun_command("ui", "--db", str(study), "--port", str(port)), stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(base + "/runs", timeout=10)
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        yield Base(base, running, study)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A page that may reach 127.0.0.1 only, collecting its console errors and blocked requests."""
    context = browser.new_context()
    page = context.new_page()
    page.errors, page.blocked = [], []
    page.on("console", lambda message: page.errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: page.errors.append(str(error)))

    def only_local(route):
        if route.request.url.startswith("http://127.0.0.1:"):
            route.continue_()
        else:
            page.blocked.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    yield page
    context.close()


def panels(page) -> int:
    """SVG panels drawn with at least one line or point inside their plot area."""
    return page.locator("figure.chart svg.panel:has(path.line, circle.point)").count()


def visit(page, url: str):
    response = page.goto(url)
    page.wait_for_load_state("networkidle")
    return response


@pytest.mark.parametrize("path, figures", [("/", 12), ("/runs", 0), ("/runs/12", 6), ("/compare?ids=11,12", 4),
                                           ("/?by=lr&arch=mlp", 2), ("/?by=lr", 2), ("/claims", 0)])
def test_each_page_draws_its_figures_offline_without_errors(server, page, path, figures):
    assert visit(page, server + path).status == 200
    assert panels(page) >= figures
    for index in range(page.locator("figure.chart svg.panel").count()):  # each panel laid out, not collapsed
        box = page.locator("figure.chart svg.panel").nth(index).bounding_box()
        assert box and box["width"] > 200 and box["height"] > 150
    assert not page.errors, page.errors
    assert not page.blocked, page.blocked


def test_a_filter_control_changes_the_table(server, page):
    visit(page, server + "/")
    before = page.locator("table.report tbody tr td:first-child").all_inner_texts()
    page.fill("input[name=arch]", "mlp")
    page.click("form.controls button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert "arch=mlp" in page.url
    archs = page.locator("table.report tbody tr td:first-child").all_inner_texts()
    assert set(before) == {"mlp", "cnn"} and archs and set(archs) == {"mlp"}  # as the CLI: a filter selects every recipe
    assert page.locator("figure.chart[data-kind=curves]").count() == 1
    assert not page.errors, page.errors


def test_the_runs_filters_offer_the_stores_values(server, page):
    visit(page, server + "/runs")
    assert page.locator("select[name=arch] option").all_inner_texts() == ["(any)", "cnn", "mlp"]
    page.select_option("select[name=arch]", "cnn")
    page.select_option("select[name=status]", "completed")
    page.click("#filters button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert "arch=cnn" in page.url and "status=completed" in page.url
    rows = page.locator("table.runs tbody tr")
    assert rows.count() == 50 and set(page.locator("table.runs tbody tr td:nth-child(3)").all_inner_texts()) == {"completed"}
    assert page.locator("select[name=arch]").input_value() == "cnn"  # the choice stays shown
    assert not page.errors, page.errors


def test_the_report_form_keeps_one_empty_where_box_that_fits_a_study(server, page):
    visit(page, server + "/")
    page.fill("input[name=where]", "study=headline-mlp")
    page.click("form.controls button[type=submit]")
    page.wait_for_load_state("networkidle")
    page.click("form.controls button[type=submit]")  # again: the empty box goes with the form as where=
    page.wait_for_load_state("networkidle")
    boxes = page.locator("input[name=where]")
    assert "where=study%3Dheadline-mlp&where=&" in page.url
    assert [boxes.nth(i).input_value() for i in range(boxes.count())] == ["study=headline-mlp", ""]
    assert boxes.first.evaluate("box => box.scrollWidth <= box.clientWidth"), "the value is cut"
    assert not page.errors, page.errors


def test_click_to_compare(server, page):
    visit(page, server + "/runs?run_id=1-20&sort=id")
    button = page.locator("#compare-button")
    assert button.is_disabled()
    page.check('input[name=ids][value="11"]')
    assert button.is_disabled()  # one run is no comparison
    page.check('input[name=ids][value="12"]')
    assert button.is_enabled() and "11, 12" in page.inner_text("#picked")
    with page.expect_navigation():
        button.click()
    page.wait_for_load_state("networkidle")
    assert page.url.endswith("/compare?ids=11,12")
    assert page.inner_text("h1") == "Compare runs 11, 12"
    seed_row = page.locator("table.diff tr:has(th:text-is('seed')) td").all_inner_texts()
    assert seed_row == ["1", "2"]
    assert panels(page) >= 4 and not page.errors, page.errors


# -- the acceptance list, in the browser ----------------------------------------------------------------------

def test_the_report_draws_a_curve_panel_per_architecture(server, page):
    visit(page, server + "/")
    titles = page.locator("figure.chart[data-kind=curves] svg.panel text.title").all_text_contents()
    assert {t.split(":")[0] for t in titles} == {"CNN", "MLP"} and len(titles) == 4
    for figure in range(page.locator("figure.chart").count()):  # no legend over a panel
        legend = page.locator("figure.chart").nth(figure).locator("ul.legend").bounding_box()
        for panel in page.locator("figure.chart").nth(figure).locator("svg.panel").all():
            box = panel.bounding_box()
            assert legend["y"] >= box["y"] + box["height"] - 1


@pytest.mark.parametrize("path", ["/", "/claims", "/runs", "/runs/12", "/compare?ids=11,12", "/?by=lr&arch=mlp",
                                  "/?by=lr&arch=mlp&then=batch_size"])
def test_a_phone_wide_screen_scrolls_tables_not_the_page(server, page, path):
    """Tables scroll within the page; figures and their legends shrink to it (a pivot's figure was 461 px)."""
    page.set_viewport_size({"width": 400, "height": 900})
    visit(page, server + path)
    assert page.evaluate("document.documentElement.scrollWidth") <= 400, path


def test_a_phone_wide_screen_shows_each_claims_verdict_without_scrolling(server, page):
    """The verdict stands beside the claim's name, not past its rule at the table's scrolled-off edge."""
    page.set_viewport_size({"width": 400, "height": 900})
    visit(page, server + "/claims")
    boxes = [cell.bounding_box() for cell in page.locator("table.claims td.verdict").all()]
    assert boxes and all(box["x"] + box["width"] <= 400 for box in boxes)


def test_runs_shows_the_cli_values_and_a_far_page_is_not_found(server, page):
    visit(page, server + "/runs?per_page=500")
    cells = {cell.strip() for cell in page.locator("table.runs td").all_inner_texts()}
    assert not {"None", "True", "False"} & cells
    visit(page, server + "/runs")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1400 or page.viewport_size["width"] < 1400
    assert visit(page, server + "/runs?page=9999").status == 404


def test_a_running_runs_page_answers_and_reloads(server, page):
    response = visit(page, f"{server}/runs/{server.running}")
    assert response.status == 200
    assert page.locator('meta[http-equiv="refresh"]').count() == 1
    assert page.locator("table.epochs tbody tr").count() == 2 and panels(page) >= 2


def test_the_diagnostics_and_the_grid(server, page):
    visit(page, server + "/runs/12")
    assert page.locator("figure.chart").count() >= 3 and page.locator("figure.chart[data-kind=diagnostic]").count() >= 1
    visit(page, server + "/?by=lr&arch=mlp")
    grid = page.locator("figure.chart[data-kind=grid]")
    assert grid.count() == 1 and grid.locator("a circle.point").count() > 20
    with page.expect_navigation():
        grid.locator("a").first.click(force=True)  # where points overlap, the one on top opens
    assert re.search(r"/runs/\d+$", page.url) and page.inner_text("h1").startswith("Run ")


def test_an_unknown_run_is_a_page_with_a_way_back(server, page):
    assert visit(page, server + "/runs/999999").status == 404
    assert page.locator("p.error").count() == 1 and page.locator('main a[href="/runs"]').count() == 1


def test_ui_on_a_busy_port_is_one_line_and_exit_2(server):
    port = int(server.rsplit(":", 1)[1])
    result = subprocess.run(bnrun_command("ui", "--db", str(server.store), "--port", str(port)), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "cannot listen" in result.stderr
    assert not result.stdout


def test_the_html_report_is_light_and_offline(server, browser, tmp_path):
    output = tmp_path / "report.html"
    made = subprocess.run(bnrun_command("report", "--format", "html", "--db", str(server.store), "--output", str(output)),
                          capture_output=True, text=True, timeout=240)
    assert made.returncode == 0, made.stderr
    assert output.stat().st_size < 1_500_000
    context = browser.new_context()
    page = context.new_page()
    requests, errors = [], []
    page.on("request", lambda request: requests.append(request.url))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(output.as_uri())
    page.wait_for_load_state("networkidle")
    try:
        assert requests == [output.as_uri()] and panels(page) >= 4 and not errors
        assert page.locator("table.diagnostics-summary tbody tr").count() >= 4
    finally:
        context.close()


def screenshots_script():
    spec = importlib.util.spec_from_file_location("screenshots", REPO / "scripts" / "screenshots.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_the_screenshots_show_the_shipped_store():
    """Each docs/ui*.png records the SHA-256 of the store it shows; it must be the shipped store's (else run
    python scripts/screenshots.py)."""
    script = screenshots_script()
    shipped = script.store_digest(SHIPPED)
    shots = sorted((REPO / "docs").glob("ui*.png"))
    assert shots
    stale = {shot.name: script.recorded_digest(shot) for shot in shots if script.recorded_digest(shot) != shipped}
    assert not stale, f"screenshots of another store (shipped: {shipped[:12]}): {stale}; run python scripts/screenshots.py"
