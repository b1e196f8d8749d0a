"""The cost of `bnrun train --diagnostics`: the wall time of a whole trial (all epochs,
population statistics, test evaluation, every store write) with and without the diagnostics,
measured in the same run on the same data, and the ratio. The target is an overhead under 30 %.

    python benchmarks/diagnostics_overhead.py                 # MLP default trial, CNN 3 epochs
    python benchmarks/diagnostics_overhead.py --cnn-epochs 10 # the CNN's default trial

Each trial goes into its own temporary store through the same function `bnrun train` calls,
after a warm-up trial. This VM's speed drifts by more than the overhead between two trials, so
the table also gives the probes' own time (each probe is timed and stored as the `seconds`
diagnostic) as a share of the rest of the same trial: that share is the overhead, free of drift.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bnrun.cli.options import GridOptions, build_sweep
from bnrun.run.progress import SilentReporter
from bnrun.run.sweep import run_sweep
from bnrun.store import Store


def trial_seconds(arch: str, epochs: int | None, diagnostics: bool) -> tuple[float, float]:
    """(wall seconds of the whole trial, seconds spent in the diagnostic probes)."""
    sweep = build_sweep(GridOptions(arch=arch, bn="pre", epochs=None if epochs is None else str(epochs)), seeds=1,
                        device="cpu", diagnostics=diagnostics)
    with tempfile.TemporaryDirectory() as directory:
        store = Store(str(Path(directory) / "bench.db"))
        start = time.perf_counter()
        result = run_sweep(sweep, store, SilentReporter())
        seconds = time.perf_counter() - start
        records = store.diagnostics_by_run(result.completed)[result.completed[0]]
        store.close()
    return seconds, sum(r.value for r in records if r.kind == "seconds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cnn-epochs", type=int, default=3)
    args = parser.parse_args()
    trial_seconds("mlp", 1, True)  # warm-up: imports, data files in the page cache, allocator
    print("| trial | without diagnostics | with diagnostics | wall-time ratio | probes | probes / rest of the trial |")
    print("|---|---:|---:|---:|---:|---:|")
    for arch, epochs in (("mlp", None), ("cnn", args.cnn_epochs)):
        plain, _ = trial_seconds(arch, epochs, False)
        probed, probes = trial_seconds(arch, epochs, True)
        label = f"{arch.upper()} bn=pre, {'default epochs' if epochs is None else f'{epochs} epochs'}"
        print(f"| {label} | {plain:.1f} s | {probed:.1f} s | {probed / plain:.2f}× | {probes:.1f} s | "
              f"{100 * probes / (probed - probes):.1f} % |", flush=True)


if __name__ == "__main__":
    main()
