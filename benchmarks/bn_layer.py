"""Forward+backward time of one batch-norm layer: torch's native kernel vs bnrun's custom
layer (eager and fused), at the shapes the project's models use, in fp32 and bf16 (the
activations autocast hands BN; statistics and parameters fp32), NCHW and channels_last,
measured in one run.

    python benchmarks/bn_layer.py            # full measurement
    python benchmarks/bn_layer.py --quick    # fewer repetitions

Timings are interleaved (native, eager, fused, then rotated by one each round, each slot after one
untimed step, so that no variant always inherits the caches of the eager path's larger footprint):
the table gives each variant's median time and, as the ratios, the median over rounds of each
round's ratio to native (paired, so that a background load or this VM's drifts in speed slow every
variant of a round alike instead of skewing the ratios), with the fused ratio's interquartile
range over the rounds. The header names the
vector instruction set the fused kernel was built for.

glibc hands the layers' multi-megabyte outputs fresh pages or reused heap depending on its state,
and the page faults of fresh pages moved whole runs by ±15 % on the project's VMs; pinning its
thresholds makes every round reuse the heap, so that the kernels are what is compared:

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184 python benchmarks/bn_layer.py
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

import torch

import bnrun.nn as bnn
from bnrun.nn import fused

SHAPES = [(128, 32, 28, 28), (128, 64, 14, 14), (128, 256), (128, 128)]
CASES = [(dtype, layout) for dtype in (torch.float32, torch.bfloat16) for layout in ("nchw", "channels_last")]


def layer_for(shape, variant: str):
    channels = shape[1]
    if variant == "native":
        return torch.nn.BatchNorm2d(channels) if len(shape) == 4 else torch.nn.BatchNorm1d(channels)
    cls = bnn.BatchNorm2d if len(shape) == 4 else bnn.BatchNorm1d
    return cls(channels, fused=variant == "fused")


def step(layer, x, upstream) -> None:
    x.grad = None
    layer(x).backward(upstream)


def time_once(layer, x, upstream, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        step(layer, x, upstream)
    return (time.perf_counter() - start) / inner


def measure(shape, dtype, layout: str, repeats: int, inner: int) -> dict[str, list[float]]:
    """Seconds per step of each variant, one sample per round."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape).to(dtype).contiguous(memory_format=memory_format).requires_grad_(True)
    upstream = torch.randn(shape).to(dtype).contiguous(memory_format=memory_format)
    layers = {name: layer_for(shape, name).train() for name in ("native", "eager", "fused")}
    for layer in layers.values():  # warm-up; for "fused" this is where compilation happens
        for _ in range(3):
            step(layer, x, upstream)
    samples: dict[str, list[float]] = {name: [] for name in layers}
    names = list(layers)
    for round_ in range(repeats):
        for name in names[round_ % 3:] + names[: round_ % 3]:  # each variant follows each other one alike
            step(layers[name], x, upstream)  # untimed: the caches refilled after the previous variant
            samples[name].append(time_once(layers[name], x, upstream, inner))
    return samples


def paired_ratios(samples: dict[str, list[float]], name: str) -> list[float]:
    return [a / b for a, b in zip(samples[name], samples["native"])]


def spread(ratios: list[float]) -> str:
    low, _, high = statistics.quantiles(ratios, n=4)
    return f"{low:.2f}–{high:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    repeats, inner = (5, 3) if args.quick else (21, 5)
    warnings.simplefilter("always")
    machine = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {machine}, {torch.get_num_threads()} threads, "
          f"fused kernel built for {fused.kernel_isa()}")
    print("| shape | dtype | layout | native ms | custom eager ms | custom fused ms "
          "| eager / native | fused / native | fused / native, IQR |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for dtype, layout in CASES:
        for shape in SHAPES:
            if layout == "channels_last" and len(shape) != 4:
                continue
            samples = measure(shape, dtype, layout, repeats, inner)
            t = {name: statistics.median(values) * 1e3 for name, values in samples.items()}
            print(f"| {tuple(shape)} | {str(dtype).removeprefix('torch.')} | {layout} | {t['native']:.3f} | "
                  f"{t['eager']:.3f} | {t['fused']:.3f} | {statistics.median(paired_ratios(samples, 'eager')):.2f}× | "
                  f"{statistics.median(paired_ratios(samples, 'fused')):.2f}× | "
                  f"{spread(paired_ratios(samples, 'fused'))} |", flush=True)


if __name__ == "__main__":
    main()
