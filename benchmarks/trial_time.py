"""The wall time of whole trials (every epoch, population statistics, test evaluation), CNN and
MLP, measured in the same run, each trial a fresh `bnrun train` process into a temporary store:
the reference path (fp32, NCHW, eager custom BN: `--precision fp32 --no-fused --no-channels-last`),
the fast path (fused kernel, channels_last CNN) in fp32 and, where the CPU has bf16 units, bf16,
and torch.nn's BN on each of those paths (`--bn-impl torch`), so that the custom BN's cost shows
against torch's own kernel. Also each trial's peak memory (max RSS of its process). The row of
`bnrun train`'s default path (fused, channels_last, `--precision auto`) is marked "(the default)".

    python benchmarks/trial_time.py [--arch cnn,mlp] [--epochs N] [--repeats N]

With --repeats N every path runs N times, in rounds that run each path once; the table gives each
time and memory figure's median over the rounds and each ratio's median over the rounds' paired
ratios, followed by each round's ratio (the BN path and test accuracy are the first round's: a seed
repeats on one machine).

Run it on a quiet machine: nothing else may use the CPU meanwhile.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bnrun.config import AUTO_PRECISION, resolve_precision
from bnrun.store import Store
from bnrun.training.precision import bf16_unsupported

REFERENCE = ["--precision", "fp32", "--no-fused", "--no-channels-last"]


def precisions() -> list[str]:
    return ["fp32"] if bf16_unsupported("cpu") else ["fp32", "bf16"]


def variants(arch: str) -> dict[str, list[str]]:
    """Row name -> the `bnrun train` flags of that path (the memory layout is the CNN's option only)."""
    rows = {"reference": REFERENCE if arch == "cnn" else REFERENCE[:-1]}
    for precision in precisions():
        rows[f"{precision} custom fused"] = ["--precision", precision, "--fused"]
        rows[f"{precision} torch BN"] = ["--precision", precision, "--bn-impl", "torch"]
    return rows


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


def repeated_trials(arch: str, epochs: int | None, repeats: int, workdir: Path) -> dict[str, list[dict]]:
    """Row name -> one measurement per round; a round runs every path once."""
    rounds = [{name: timed_trial(arch, flags, epochs, workdir) for name, flags in variants(arch).items()}
              for _ in range(repeats)]
    return {name: [row[name] for row in rounds] for name in rounds[0]}


def median_of(rows: list[dict], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def paired_ratio(ours: list[dict], theirs: list[dict], key: str) -> str:
    """The median over rounds of each round's ratio, then (with several rounds) each round's."""
    ratios = [a[key] / b[key] for a, b in zip(ours, theirs, strict=True)]
    rounds = f" (rounds: {', '.join(f'{r:.2f}×' for r in ratios)})" if len(ratios) > 1 else ""
    return f"{statistics.median(ratios):.2f}×{rounds}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="cnn,mlp")
    parser.add_argument("--epochs", type=int, default=None, help="fewer epochs than the default (say so when quoting)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every path (medians are reported)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    from bnrun.nn.fused import kernel_isa

    print(f"CPU: {cpu_name()}; fused kernel built for {kernel_isa()}; torch {torch_version()}")
    print("| arch | path | whole trial | median epoch | after training (population stats + test) | peak RSS | BN path | test acc. |")
    print("|---|---|---:|---:|---:|---:|---|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch.split(","):
            rows = repeated_trials(arch, args.epochs, args.repeats, Path(tmp))
            default = f"{resolve_precision(AUTO_PRECISION, arch, bf16_unsupported('cpu') is None)} custom fused"
            for name, runs in rows.items():
                name += " (the default)" if name == default else ""
                print(f"| {arch} | {name} | {median_of(runs, 'trial'):.1f} s | {median_of(runs, 'epoch'):.2f} s | "
                      f"{median_of(runs, 'after'):.1f} s | {median_of(runs, 'rss_gb'):.2f} GB | {runs[0]['path']} | "
                      f"{100 * runs[0]['acc']:.2f} % |")
            for precision in precisions():
                ours, theirs = rows[f"{precision} custom fused"], rows[f"{precision} torch BN"]
                print(f"| {arch} | {precision}: custom fused / torch BN | {paired_ratio(ours, theirs, 'trial')} | "
                      f"{paired_ratio(ours, theirs, 'epoch')} | {paired_ratio(ours, theirs, 'after')} | | | |")


def cpu_name() -> str:
    from bnrun.training.hardware import cpu_info

    return cpu_info()[0]


def torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
