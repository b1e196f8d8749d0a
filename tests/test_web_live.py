"""The web view of a store a trial is writing: while the trial creates the store's tables `/api/runs` may answer
503 (unavailable); from the moment it lists a run that run's page answers 200, while it runs (reloading, its epochs
so far) and once it has completed; `/` answers 200 from then on (what is running, then the report). A real `bnrun
train` process writes; the view reads in-process. Marked `slow`."""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from starlette.testclient import TestClient

from bnrun.errors import StoreError
from bnrun.web.app import create_app
from conftest import bnrun_command

pytestmark = [pytest.mark.slow]
# Epochs enough that the trial runs for several of the view's polls: with 3 the whole run took less than
# one poll on the project's CI once, and the view never saw it running.
TRIAL = ["train", "--arch", "mlp", "--bn", "pre", "--epochs", "10", "--train-subset", "600", "--seeds", "1"]


def app_when_ready(db, process: subprocess.Popen, timeout: float = 240) -> TestClient:
    """The view, once the trial's process has made the store (a missing store is refused, as `bnrun ui` does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return TestClient(create_app(str(db)), base_url="http://localhost")
        except StoreError:
            assert process.poll() in (None, 0), "the trial's process ended first"
            time.sleep(0.05)
    raise AssertionError("no store appeared")


def test_the_view_follows_a_trial_as_it_writes(tmp_path):
    db = tmp_path / "live.db"
    process = subprocess.Popen(bnrun_command(*TRIAL, "--db", str(db)), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    seen: dict[str, int] = {}
    try:
        client = app_when_ready(db, process)
        while True:
            finished = process.poll() is not None
            answer = client.get("/api/runs")
            if answer.status_code == 503 and not seen and not finished:
                time.sleep(0.05)  # the trial is still creating the store's tables: unavailable, said as such
                continue
            assert answer.status_code == 200, answer.text[:300]
            listed = answer.json()["runs"]
            for run in listed:
                page = client.get(f"/runs/{run['id']}")
                assert page.status_code == 200, (run["status"], page.text[:300])
                if run["status"] == "running" and '<meta http-equiv="refresh"' not in page.text:
                    # it may have completed between the listing and the page; then the page is a finished run's
                    assert client.get(f"/api/runs/{run['id']}").json()["status"] != "running", page.text[:300]
                elif run["status"] == "running":
                    shown = len(re.findall(r"<tr><td class=\"number\">\d+</td>", page.text))
                    # the epochs so far, none ahead: bounded by the count read after the page, since the trial
                    # goes on writing between the listing and the page (2 epochs in between, under CI's load)
                    written = client.get(f"/api/runs/{run['id']}").json()["epochs_completed"]
                    assert shown <= written + 1
                seen[run["status"]] = seen.get(run["status"], 0) + 1
            report = client.get("/")  # an empty store asks for trials (404); then what runs, then the report
            if not listed and report.status_code == 200:  # the run may have appeared between the two requests
                listed = client.get("/api/runs").json()["runs"]
            assert report.status_code == (200 if listed else 404), report.text[:300]
            if finished:
                break
            time.sleep(0.1)
        assert process.returncode == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
    assert seen.get("completed") and seen.get("running"), seen  # it was seen running, then completed
