"""Forward+backward time of one batch-norm layer: torch's native kernel vs bnrun's custom
layer (eager and fused), at the shapes the project's models use, in fp32 and bf16 (the
activations autocast hands BN; statistics and parameters fp32), NCHW and channels_last,
measured in one run, each against the floor that this machine's memory sets.

The floor. Forward plus backward of training-mode BN must at least read x twice (statistics, then
y) and write y once, then read x and dy twice (the two gradient sums, then dx) and write dx once:
8 passes over a tensor of B bytes, 8·B bytes, the traffic of 4 copies of it (a copy reads B and
writes B). A copy of a tensor of the row's size, dtype and layout (`Tensor.copy_`, with the same
threads) is timed in the same interleaved rounds as the layers; the floor of a round is 4 copy
times, and the bandwidth printed is 2·B over the median copy time. A kernel that streams its
stores skips the read a copy's write-allocate pays, so it may in principle come in under 1.

    python benchmarks/bn_layer.py            # full measurement
    python benchmarks/bn_layer.py --quick    # fewer repetitions

The floor over the step's four tensors. The floor's copy touches two tensors of B bytes; a layer step
touches four (x, y, dy, dx), and once those outgrow a cache level each byte costs more: on the
AVX512-BF16 EPYC (32 MiB of L3), 4 copies of a 12.8 MB float32 tensor into one target took 0.69–1.29 ms
in runs where the same 4 copies over four tensors took 0.96–2.11 ms. So each row also times "copies": x
copied into y and dy into dx, twice, the same 8·B bytes as the floor over the step's own working set;
"floor, 4 tensors" is its time.

The streaming reference: the same 8 passes over the same four tensors by torch's plainest vectorized ops
on the tensors' bytes read as float32 (forward: x.sum(), then y = 2·x; backward: x·dy, then dx = x + dy;
y and dx allocated by the op and kept until the next round, as the layer's are). Its time is what this
machine's memory gives BN's pass structure without any arithmetic of BN; "fused / streaming" is the
layer's distance from it.

The "operators" variant calls the fused kernel's training operators directly (forward, then
backward, each output dropped when done), below the autograd dispatch key: the layer's passes without
its Python, the autograd engine, the Python autograd formulas that operators.py registers for tracing,
or a y that lives until the backward, so that the two ratios to the floor separate the kernel's
passes from what a layer step adds around them.

Timings are interleaved (copy, copies, streaming, operators, native, eager, fused, then rotated by one each round, each slot after one
untimed step, so that no variant always inherits the caches of the eager path's larger footprint):
the table gives each variant's median time and, as the ratios, the median over rounds of each
round's ratio to native or to the floor (paired, so that a background load or this VM's drifts in speed slow every
variant of a round alike instead of skewing the ratios), with the fused ratio's interquartile
range over the rounds. Python's cyclic garbage collector is paused while a row is timed, as timeit
pauses it (its collections, which the interpreter triggers by allocation counts, land on whichever
variant is running: they slowed a (128, 64, 14, 14) step by about a quarter on the project's VMs). The header names the
vector instruction set the fused kernel was built for.

glibc hands the layers' multi-megabyte outputs fresh pages or reused heap depending on its state,
and the page faults of fresh pages moved whole runs by ±15 % on the project's VMs; pinning its
thresholds makes every round reuse the heap, so that the kernels are what is compared:

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184 python benchmarks/bn_layer.py
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import statistics
import time
import warnings

import torch

import bnrun.nn as bnn
from bnrun.nn import fused

SHAPES = [(128, 32, 28, 28), (128, 64, 14, 14), (128, 256), (128, 128)]
FLOOR_COPIES = 4  # 8 passes over the tensor (3 forward, 5 backward), a copy being 2
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


class Copy:
    """A copy of x into a tensor of its size, dtype and layout: the bandwidth the floor is made of."""

    def __init__(self, x):
        self.target = torch.empty_like(x)

    def __call__(self, x):
        return self.target.copy_(x.detach())


def copy_step(copy, x, upstream) -> None:
    copy(x)


class Copies:
    """x copied into y and dy into dx, twice: the floor's 4 copies over the four tensors a layer step touches."""

    def __init__(self, x):
        self.y, self.dx = torch.empty_like(x), torch.empty_like(x)

    def __call__(self, x, upstream) -> None:
        x = x.detach()
        for _ in range(FLOOR_COPIES // 2):
            self.y.copy_(x)
            self.dx.copy_(upstream)


def copies_step(copies, x, upstream) -> None:
    copies(x, upstream)


def as_float32(t: torch.Tensor) -> torch.Tensor:
    """t's bytes, in memory order, read as one row of float32 (t contiguous or channels_last)."""
    in_memory_order = t.permute(0, 2, 3, 1) if t.dim() == 4 and not t.is_contiguous() else t
    return in_memory_order.reshape(-1).view(torch.float32)


class Streaming:
    """BN's 8 passes over x, y, dy and dx done by torch's plainest vectorized ops on the tensors' bytes as
    float32: what the memory allows the pass structure, without BN's arithmetic."""

    def __init__(self, x):
        self.outputs: tuple[torch.Tensor, ...] = ()

    def __call__(self, x, upstream) -> None:
        x, dy = as_float32(x.detach()), as_float32(upstream)
        self.outputs = ()  # the last round's y and dx freed first, as the layer step frees its dx (x.grad)
        x.sum()
        y = torch.mul(x, 2.0)
        torch.dot(x, dy)
        self.outputs = (y, torch.add(x, dy))


def streaming_step(streaming, x, upstream) -> None:
    streaming(x, upstream)


class Operators:
    """The fused kernel's two training operators called directly, forward then backward: the layer's
    passes without the layer (its Python, the autograd engine, a y kept alive until the backward)."""

    def __init__(self, x):
        self.ops = fused.cpu_kernel().ops
        self.weight, self.bias = torch.ones(x.shape[1]), torch.zeros(x.shape[1])

    def __call__(self, x, upstream) -> None:
        with torch._C._AutoDispatchBelowAutograd():  # the kernels, not operators.py's Python autograd formulas
            y, stats = self.ops.batch_norm_train(x.detach(), self.weight, self.bias, 1e-5, False)
            del y
            self.ops.batch_norm_train_backward(upstream, x.detach(), stats, self.weight, False)


def operators_step(operators, x, upstream) -> None:
    operators(x, upstream)


def time_once(step_fn, layer, x, upstream, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        step_fn(layer, x, upstream)
    return (time.perf_counter() - start) / inner


def measure(shape, dtype, layout: str, repeats: int, inner: int) -> dict[str, list[float]]:
    """Seconds per step of each variant, one sample per round, with Python's cyclic garbage collector
    paused (as timeit pauses it): a collection that lands in one variant's rounds is not its cost."""
    gc.collect()
    gc.disable()
    try:
        return measure_rounds(shape, dtype, layout, repeats, inner)
    finally:
        gc.enable()


def measure_rounds(shape, dtype, layout: str, repeats: int, inner: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape).to(dtype).contiguous(memory_format=memory_format).requires_grad_(True)
    upstream = torch.randn(shape).to(dtype).contiguous(memory_format=memory_format)
    layers = {"copy": Copy(x), "copies": Copies(x), "streaming": Streaming(x), "operators": Operators(x),
              **{name: layer_for(shape, name).train() for name in ("native", "eager", "fused")}}
    steps = {name: {"copy": copy_step, "copies": copies_step, "streaming": streaming_step,
                    "operators": operators_step}.get(name, step) for name in layers}
    for name, layer in layers.items():  # warm-up; for "fused" this is where compilation happens
        for _ in range(3):
            steps[name](layer, x, upstream)
    samples: dict[str, list[float]] = {name: [] for name in layers}
    names = list(layers)
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:  # each variant follows each other one alike
            steps[name](layers[name], x, upstream)  # untimed: the caches refilled after the previous variant
            samples[name].append(time_once(steps[name], layers[name], x, upstream, inner))
    return samples


def paired_ratios(samples: dict[str, list[float]], name: str, to: str = "native") -> list[float]:
    """Per round, `name`'s time over `to`'s ("floor": FLOOR_COPIES copy times; "copies": the floor over the
    step's four tensors)."""
    reference = [FLOOR_COPIES * t for t in samples["copy"]] if to == "floor" else samples[to]
    return [a / b for a, b in zip(samples[name], reference)]


def median_ratio(samples: dict[str, list[float]], name: str, to: str = "native") -> str:
    return f"{statistics.median(paired_ratios(samples, name, to)):.2f}×"


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
          f"fused kernel built for {fused.kernel_isa()} (version {fused.KERNEL_VERSION}); floor: "
          f"{2 * FLOOR_COPIES} passes over the tensor = {FLOOR_COPIES} copies at the copy bandwidth measured per row")
    print("| shape | dtype | layout | MB moved | copy GB/s | floor ms | floor, 4 tensors ms | streaming ms | native ms "
          "| eager ms | fused ms | streaming / floor | native / floor | fused / floor | operators / floor "
          "| fused / floor, 4 tensors | operators / floor, 4 tensors | fused / streaming "
          "| eager / native | fused / native | fused / native, IQR |")
    print("|---|---|---|" + "---:|" * 18)
    for dtype, layout in CASES:
        for shape in SHAPES:
            if layout == "channels_last" and len(shape) != 4:
                continue
            print(row(shape, dtype, layout, measure(shape, dtype, layout, repeats, inner)), flush=True)


def row(shape, dtype, layout: str, samples: dict[str, list[float]]) -> str:
    t = {name: statistics.median(values) for name, values in samples.items()}
    tensor_bytes = math.prod(shape) * dtype.itemsize
    moved = 2 * FLOOR_COPIES * tensor_bytes
    return (f"| {tuple(shape)} | {str(dtype).removeprefix('torch.')} | {layout} | {moved / 1e6:.2f} | "
            f"{2 * tensor_bytes / t['copy'] / 1e9:.1f} | {FLOOR_COPIES * t['copy'] * 1e3:.3f} | "
            f"{t['copies'] * 1e3:.3f} | {t['streaming'] * 1e3:.3f} | {t['native'] * 1e3:.3f} | "
            f"{t['eager'] * 1e3:.3f} | {t['fused'] * 1e3:.3f} | "
            f"{median_ratio(samples, 'streaming', 'floor')} | {median_ratio(samples, 'native', 'floor')} | "
            f"{median_ratio(samples, 'fused', 'floor')} | {median_ratio(samples, 'operators', 'floor')} | "
            f"{median_ratio(samples, 'fused', 'copies')} | {median_ratio(samples, 'operators', 'copies')} | "
            f"{median_ratio(samples, 'fused', 'streaming')} | {median_ratio(samples, 'eager')} | "
            f"{median_ratio(samples, 'fused')} | "
            f"{spread(paired_ratios(samples, 'fused'))} |")


if __name__ == "__main__":
    main()
