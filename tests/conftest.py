"""Shared fixtures: every test gets its own store; the user's ./bnrun.db is never touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch) -> Path:
    db = tmp_path / "bnrun.db"
    monkeypatch.setenv("BNRUN_DB", str(db))
    return db


def bnrun_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bnrun", *args]


def run_bnrun(*args: str, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    """bnrun in a subprocess, as a user runs it."""
    return subprocess.run(bnrun_command(*args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
