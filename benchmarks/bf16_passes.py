"""What one pass over bfloat16 values costs the fused kernel's loops, against a copy of the same bytes,
with the data in the core's own cache (one thread, a tensor that fits the L2): the compute bound of the
bf16 rows in bn_layer.py, apart from the memory they move.

A bf16 output pass reads values, widens them to float32, computes in float32 and rounds back to
bf16 before its store. Its bytes are a copy's; its instructions are not. Each variant below handles
the same number of values:

- `bf16 copy`: `Tensor.copy_` of bf16 into bf16, the bytes an output pass reads and writes;
- `f32 → bf16, bnrun`: the kernel's output loop (`write`, through `pack_bf16`) on float32 input, as
  every bf16 output pass stores (`CpuKernel.to_bf16`, which allocates its output);
- `f32 → bf16, torch`: torch's own conversion into a preallocated bf16 tensor;
- `eval pass, bf16` and `eval pass, f32`: the kernel's prediction-mode pass y = a·x + k on (N, C, S)
  input, whole: widening, the multiply-add, the rounding and the store.

    python benchmarks/bf16_passes.py

Each call also pays fixed costs (the dispatcher, checks, an allocation) that are not the loop's. So
every variant runs at two sizes, both inside the L2, and the table gives the marginal cost: the
difference of the two times over the difference of values, per 32 values (one 64-byte line of bf16).
Interleaved rounds, medians; the ratio column is each round's marginal cost over the same round's
bf16 copy's.
"""

from __future__ import annotations

import gc
import math
import statistics
import time

import torch

from bnrun.nn import fused
from bnrun.training.hardware import cpu_info

SHAPES = {"small": (8, 8, 768), "large": (16, 8, 768)}  # (N, C, S); float32 in, bf16 out: 288 and 576 KiB
ROUNDS, INNER = 101, 100


def variants(shape: tuple[int, int, int]) -> dict:
    kernel = fused.cpu_kernel()
    x32 = torch.randn(shape)
    x16 = x32.to(torch.bfloat16)
    out16 = torch.empty_like(x16)
    channels = shape[1]
    mean, var, weight, bias = torch.zeros(channels), torch.ones(channels), torch.rand(channels), torch.rand(channels)
    return {
        "bf16 copy": lambda: out16.copy_(x16),
        "f32 → bf16, bnrun": lambda: kernel.to_bf16(x32),
        "f32 → bf16, torch": lambda: out16.copy_(x32),
        "eval pass, bf16": lambda: kernel.ops.batch_norm_eval(x16, mean, var, weight, bias, 1e-5, False),
        "eval pass, f32": lambda: kernel.ops.batch_norm_eval(x32, mean, var, weight, bias, 1e-5, False),
    }


def measure() -> dict[str, list[float]]:
    """Per variant and round, seconds per 32 values between the two sizes."""
    calls = {size: variants(shape) for size, shape in SHAPES.items()}
    extra_values = math.prod(SHAPES["large"]) - math.prod(SHAPES["small"])
    samples: dict[str, list[float]] = {name: [] for name in calls["large"]}
    for name in samples:
        calls["small"][name]()
        calls["large"][name]()
    for _ in range(ROUNDS):
        for name in samples:
            small, large = (time_calls(calls[size][name]) for size in ("small", "large"))
            samples[name].append((large - small) / extra_values * 32)
    return samples


def time_calls(call) -> float:
    start = time.perf_counter()
    for _ in range(INNER):
        call()
    return (time.perf_counter() - start) / INNER


def main() -> None:
    torch.set_num_threads(1)
    model, features = cpu_info()
    print(f"{model} ({features}); torch {torch.__version__}, 1 thread, fused kernel built for {fused.kernel_isa()} "
          f"(version {fused.KERNEL_VERSION}); shapes {SHAPES['small']} and {SHAPES['large']}")
    gc.disable()
    try:
        samples = measure()
    finally:
        gc.enable()
    copy = samples["bf16 copy"]
    print("| pass | ns per 32 values | / bf16 copy |")
    print("|---|---:|---:|")
    for name, times in samples.items():
        ratio = statistics.median(t / c for t, c in zip(times, copy))
        print(f"| {name} | {statistics.median(times) * 1e9:.2f} | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
