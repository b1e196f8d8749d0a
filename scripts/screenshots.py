"""The README's screenshots of `bnrun ui`: `/` and `/runs/12` of the shipped store, through Debian's
headless chromium (Playwright), into docs/ui_report.png and docs/ui_run_12.png.

    python scripts/screenshots.py [--db bnrun.db]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
SHOTS = {"/": "ui_report.png", "/runs/12": "ui_run_12.png"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str) -> None:
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=10)
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"bnrun ui did not answer at {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=str(REPO / "bnrun.db"))
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bnrun", "ui", "--db", args.db, "--port", str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(base + "/runs")
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            for path, name in SHOTS.items():
                page.goto(base + path)
                page.wait_for_selector("div.figure svg.main-svg")
                page.screenshot(path=str(REPO / "docs" / name), full_page=False)
                print(f"wrote docs/{name}")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
