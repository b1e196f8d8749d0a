"""The same MLP grid through `bnrun train --executor local` (one trial after another, torch on
all cores) and `--executor ray` (a local Ray instance, one single-threaded trial per core), each
the whole command a user waits for (start-up, every trial, every store write), measured in the
same run, with the ratio.

    python benchmarks/ray_vs_local.py                  # 3 placements × 2 seeds, 5 epochs each
    python benchmarks/ray_vs_local.py --epochs 20      # the MLP's default trial
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "bnrun", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    grid = ["train", "--arch", "mlp", "--bn", "none,pre,post", "--seeds", str(args.seeds), "--epochs", str(args.epochs)]
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as directory:
        local = timed([*grid, "--db", str(Path(directory) / "local.db")])
        ray = timed([*grid, "--executor", "ray", "--cpus-per-trial", "1", "--db", str(Path(directory) / "ray.db")])
    trials = 3 * args.seeds
    print(f"| executor | wall time ({trials} MLP trials, {args.epochs} epochs, {cores} cores) | vs local |")
    print("|---|---:|---:|")
    print(f"| local ({cores} torch threads, one trial at a time) | {local:.1f} s | 1.00× |")
    print(f"| ray ({cores} one-thread workers) | {ray:.1f} s | {ray / local:.2f}× |")


if __name__ == "__main__":
    main()
