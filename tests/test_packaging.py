"""The wheel carries what an installed bnrun needs besides Python code: the Alembic migrations
(from the top-level `migrations/`) and the fused kernel's C++ source."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_ships_migrations_and_kernel_source(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, timeout=120)
    (wheel,) = tmp_path.glob("bnrun-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"bnrun/_migrations/env.py", "bnrun/nn/csrc/bn_cpu.cpp", "bnrun/nn/fused.py"} <= names
    migrations = {p.name for p in (REPO / "migrations" / "versions").glob("*.py")}
    assert migrations and {f"bnrun/_migrations/versions/{m}" for m in migrations} <= names
    assert not any(name.endswith(".db") for name in names)
