"""`bnrun ui` in a real headless chromium (Debian's, driven by Playwright), every request outside
127.0.0.1 aborted: the figures render (SVG in the DOM), no console error, and a filter control changes
the report's table. Marked `browser`."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import SHIPPED, bnrun_command, free_port

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`bnrun ui` on a copy of the shipped store, at a free port; its base URL."""
    import httpx

    study = tmp_path_factory.mktemp("browser") / "study.db"
    shutil.copyfile(SHIPPED, study)
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
        yield base
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


@pytest.mark.parametrize("path, figures", [("/", 2), ("/runs", 0), ("/runs/12", 2), ("/compare?ids=11,12", 2),
                                           ("/?by=lr", 1)])
def test_each_page_draws_its_figures_offline_without_errors(server, page, path, figures):
    page.goto(server + path)
    page.wait_for_load_state("networkidle")
    assert page.locator("div.figure svg.main-svg").count() >= figures
    assert page.locator("div.figure .scatterlayer .trace").count() >= figures
    assert not page.errors, page.errors
    assert not page.blocked, page.blocked


def test_a_filter_control_changes_the_table(server, page):
    page.goto(server + "/")
    before = page.locator("table.report tbody tr td:first-child").all_inner_texts()
    page.fill("input[name=arch]", "mlp")
    page.click("form.controls button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert "arch=mlp" in page.url
    archs = page.locator("table.report tbody tr td:first-child").all_inner_texts()
    assert set(before) == {"mlp", "cnn"} and archs and set(archs) == {"mlp"}  # as the CLI: a filter selects every recipe
    assert not page.errors, page.errors
