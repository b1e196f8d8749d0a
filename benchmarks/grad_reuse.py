"""What writing dx over the output gradient saves in the default training steps: bnrun's fused
layers' backward node writes dx over a dy that nothing else holds (the gradient the next layer's
backward hands it), instead of allocating a tensor for dx. One SGD step of `bnrun train`'s default
trial (BN before the activation, fused, channels_last CNN, `--precision auto` resolved for this
CPU, the trial's optimizer) on a batch of 128 synthetic images, timed with the reuse on and off
(`CpuKernel.set_reuse_grad`) in alternating rounds of one process: each time's median over the
rounds, and the median of the rounds' paired ratios with their interquartile range; and how many
of the model's BN layers wrote dx over dy in a step (`CpuKernel.grads_reused`).

    python benchmarks/grad_reuse.py [--arch cnn,mlp] [--rounds 21] [--inner 10]

glibc's allocator is left as a trial meets it (no pinned thresholds): a fresh multi-megabyte dx
costs page faults there, and a trial pays them. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch
from step_profile import BATCH, default_step  # benchmarks/, the script's own folder

from bnrun.nn import fused
from bnrun.training.hardware import cpu_info


def reuses_per_step(step) -> int:
    """How many BN layers of one step write dx over their output gradient (the reuse on)."""
    kernel = fused.cpu_kernel()
    previous = kernel.set_reuse_grad(True)
    try:
        before = kernel.grads_reused()
        step()
        return kernel.grads_reused() - before
    finally:
        kernel.set_reuse_grad(previous)


def paired_times(step, rounds: int, inner: int) -> dict[bool, list[float]]:
    """Seconds per step with the reuse on (True) and off (False), one sample each per round, the order
    alternating between rounds."""
    kernel = fused.cpu_kernel()
    times: dict[bool, list[float]] = {True: [], False: []}
    previous = kernel.set_reuse_grad(True)
    gc.disable()
    try:
        for round_ in range(rounds):
            for reuse in ((True, False) if round_ % 2 == 0 else (False, True)):
                kernel.set_reuse_grad(reuse)
                step()  # untimed: the caches and the allocator's state after the other setting
                start = time.perf_counter()
                for _ in range(inner):
                    step()
                times[reuse].append((time.perf_counter() - start) / inner)
    finally:
        gc.enable()
        kernel.set_reuse_grad(previous)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="cnn,mlp")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--inner", type=int, default=10)
    args = parser.parse_args()
    if args.rounds < 2 or args.inner < 1:
        parser.error("--rounds must be at least 2 and --inner at least 1")
    archs = [arch.strip() for arch in args.arch.split(",")]
    if unknown := [arch for arch in archs if arch not in ("cnn", "mlp")]:
        parser.error(f"--arch takes cnn and mlp, got {', '.join(map(repr, unknown))}")
    if fused.cpu_kernel() is None:
        parser.exit(1, "grad_reuse.py: the fused kernel is not available on this machine\n")
    cpu_model, features = cpu_info()
    print(f"{cpu_model} ({features}); torch {torch.__version__}, {torch.get_num_threads()} threads, fused kernel built "
          f"for {fused.kernel_isa()} (version {fused.KERNEL_VERSION}); batch {BATCH}, {args.rounds} rounds of "
          f"{args.inner} steps")
    print("| model | precision | BN layers | dx over dy | dx over dy ms | fresh dx ms | over / fresh | IQR |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for arch in archs:
        step, precision, model = default_step(arch)
        for _ in range(5):  # warm-up: oneDNN's primitives
            step()
        layers = sum(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in model.modules())
        reused = reuses_per_step(step)
        times = paired_times(step, args.rounds, args.inner)
        ratios = [a / b for a, b in zip(times[True], times[False])]
        low, _, high = statistics.quantiles(ratios, n=4)
        print(f"| {arch} | {precision} | {layers} | {reused} | {statistics.median(times[True]) * 1e3:.2f} | "
              f"{statistics.median(times[False]) * 1e3:.2f} | {statistics.median(ratios):.2f}× | "
              f"{low:.2f}–{high:.2f} |", flush=True)


if __name__ == "__main__":
    main()
