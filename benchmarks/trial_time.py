"""The wall time of whole default trials (every epoch, population statistics, test evaluation), CNN
and MLP, for the reference path (fp32, NCHW, eager custom BN: `--precision fp32 --no-fused
--no-channels-last`) and the default path (fused kernel, channels_last CNN, and bf16 where the
CPU has bf16 units), measured in the same run, each trial a fresh `bnrun train` process into a
temporary store. Also each trial's peak memory (max RSS of its process).

    python benchmarks/trial_time.py [--arch cnn,mlp] [--epochs N]

Run it on a quiet machine: nothing else may use the CPU meanwhile.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bnrun.store import Store
from bnrun.training.precision import bf16_unsupported

REFERENCE = ["--precision", "fp32", "--no-fused", "--no-channels-last"]


def default_path() -> list[str]:
    return ["--precision", "fp32" if bf16_unsupported("cpu") else "bf16"]


def timed_trial(arch: str, flags: list[str], epochs: int | None, workdir: Path) -> dict:
    db = workdir / f"{arch}-{len(list(workdir.iterdir()))}.db"
    command = [sys.executable, "-m", "bnrun", "train", "--arch", arch, "--bn", "pre", "--seed", "0", "--device", "cpu",
               "--db", str(db), *flags, *(["--epochs", str(epochs)] if epochs else [])]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read()}")
    store = Store(str(db))
    (run,) = store.list_runs()
    epochs_s = [e.seconds for e in store.epochs(run.id)]
    store.close()
    return dict(wall=wall, trial=run.duration_s, epoch=sorted(epochs_s)[len(epochs_s) // 2],
                after=run.duration_s - sum(epochs_s), rss_gb=usage.ru_maxrss / 2**20, path=run.bn_path,
                acc=run.test_acc_population)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="cnn,mlp")
    parser.add_argument("--epochs", type=int, default=None, help="fewer epochs than the default (say so when quoting)")
    args = parser.parse_args()
    fast = default_path()
    print(f"default path here: {' '.join(fast)} (fused, channels_last CNN); reference: {' '.join(REFERENCE)}")
    print("| arch | path | whole trial | median epoch | after training (population stats + test) | peak RSS | BN path | test acc. |")
    print("|---|---|---:|---:|---:|---:|---|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch.split(","):
            reference = timed_trial(arch, REFERENCE, args.epochs, Path(tmp))
            new = timed_trial(arch, fast, args.epochs, Path(tmp))
            for name, row in (("reference", reference), ("default", new)):
                print(f"| {arch} | {name} | {row['trial']:.1f} s | {row['epoch']:.2f} s | {row['after']:.1f} s | "
                      f"{row['rss_gb']:.2f} GB | {row['path']} | {100 * row['acc']:.2f} % |")
            print(f"| {arch} | default / reference | {new['trial'] / reference['trial']:.2f}× | "
                  f"{new['epoch'] / reference['epoch']:.2f}× | {new['after'] / reference['after']:.2f}× | | | |")


if __name__ == "__main__":
    main()
