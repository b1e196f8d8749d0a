"""The README's screenshots of `bnrun ui`: `/` and `/runs/12` of the shipped store, through Debian's
headless chromium (Playwright), into docs/ui_report.png and docs/ui_run_12.png. Each PNG records the
SHA-256 of the store it shows (text chunk `bnrun:store-sha256`) and the page (`bnrun:url`), so a test can
tell a screenshot of an older store (tests/test_web_browser.py).

    python scripts/screenshots.py [--db bnrun.db]

The store is served from a copy in a temporary directory: the file itself is only read, to digest it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHOTS = {"/": ("ui_report.png", 1500), "/runs/12": ("ui_run_12.png", 1300)}  # page: (file, height to show)
STORE_DIGEST = "bnrun:store-sha256"
URL = "bnrun:url"
WIDTH = 1400


def store_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recorded_digest(png: Path) -> str | None:
    """The store digest a screenshot records (None: none recorded)."""
    from PIL import Image

    with Image.open(png) as image:
        return image.text.get(STORE_DIGEST) if hasattr(image, "text") else None


def with_provenance(png: bytes, digest: str, url: str) -> bytes:
    """The PNG with two text chunks: the store's SHA-256 and the page it shows."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(STORE_DIGEST, digest)
    info.add_text(URL, url)
    output = io.BytesIO()
    with Image.open(io.BytesIO(png)) as image:
        image.save(output, format="PNG", pnginfo=info, optimize=True)
    return output.getvalue()


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


def shoot(base: str, digest: str, docs: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        page = browser.new_page(viewport={"width": WIDTH, "height": 900})
        for path, (name, height) in SHOTS.items():
            page.set_viewport_size({"width": WIDTH, "height": height})
            page.goto(base + path)
            page.wait_for_selector("figure.chart svg.panel")
            (docs / name).write_bytes(with_provenance(page.screenshot(full_page=False), digest, path))
            print(f"wrote docs/{name} (store sha256 {digest[:12]}…)")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=REPO / "bnrun.db")
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "bnrun.db"
        shutil.copyfile(args.db, copy)
        digest = store_digest(copy)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "bnrun", "ui", "--db", str(copy), "--port", str(port)])
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(base + "/runs")
            shoot(base, digest, args.docs)
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
