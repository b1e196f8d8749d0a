"""What torch's autograd engine adds to one layer's training step: the layer's forward, then its output's
node called directly (`y.grad_fn(dy, ...)` under no_grad: the node's own work, bnrun's kernels for bnrun's
layer), against the same forward and node reached through `torch.autograd.grad(y, x, dy)` (the Python
call, the graph task, the node, the captured gradient), for torch's elementwise multiply, torch's BN and
bnrun's fused BN, at the shapes of bn_layer.py's rows and at a batch of 2 (where the node's work is a
few microseconds).

Timed as bn_layer.py times its variants: interleaved rounds, each slot after one untimed step, each
sample the mean of `inner` steps; the table gives medians and the engine's difference in microseconds.
bn_layer.py's layer step pays that difference once per step; a model's training step enters the engine
once for all of its layers.

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184 python benchmarks/engine_cost.py
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import time
import warnings

import torch

import bnrun.nn as bnn
from bnrun.nn import fused

SHAPES = [(2, 64, 2, 2), (128, 64, 14, 14), (128, 32, 28, 28), (128, 256)]


def forwards(shape) -> dict:
    """Each layer's forward, by name."""
    channels = shape[1]
    torch_bn = torch.nn.BatchNorm2d(channels) if len(shape) == 4 else torch.nn.BatchNorm1d(channels)
    ours = (bnn.BatchNorm2d if len(shape) == 4 else bnn.BatchNorm1d)(channels, fused=True)
    return {"mul": lambda x: x * 2.0, "torch BN": torch_bn.train(), "bnrun fused": ours.train()}


def step(forward, x, dy, through_engine: bool) -> None:
    y = forward(x)
    if through_engine:
        torch.autograd.grad(y, (x,), dy)
    else:
        with torch.no_grad():
            y.grad_fn(*node_inputs(y, dy))


def node_inputs(y, dy) -> tuple:
    """The node's gradient inputs: dy for y, None for every other output (bnrun's node has a second)."""
    return (dy,) + (None,) * (len(y.grad_fn._input_metadata) - 1)


def time_once(forward, x, dy, through_engine: bool, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        step(forward, x, dy, through_engine)
    return (time.perf_counter() - start) / inner


def measure(shape, dtype, rounds: int, inner: int) -> dict[tuple[str, bool], list[float]]:
    """Seconds per step of each (layer, through the engine) variant, one sample per round."""
    torch.manual_seed(0)
    x = torch.randn(shape).to(dtype).requires_grad_(True)
    dy = torch.randn(shape).to(dtype)
    variants = [(name, forward, engine) for name, forward in forwards(shape).items() for engine in (False, True)]
    samples: dict[tuple[str, bool], list[float]] = {(name, engine): [] for name, _, engine in variants}
    for _, forward, engine in variants:
        for _ in range(3):
            step(forward, x, dy, engine)
    gc.collect()
    gc.disable()
    try:
        for round_ in range(rounds):
            shift = round_ % len(variants)
            for name, forward, engine in variants[shift:] + variants[:shift]:
                step(forward, x, dy, engine)
                samples[name, engine].append(time_once(forward, x, dy, engine, inner))
    finally:
        gc.enable()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21, help="interleaved rounds, one sample each (at least 1)")
    parser.add_argument("--inner", type=int, default=5, help="steps per sample (at least 1)")
    args = parser.parse_args()
    for name in ("rounds", "inner"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    warnings.simplefilter("ignore")
    fused.cpu_kernel()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print("| shape | dtype | layer | forward + node, µs | forward + engine, µs | engine adds, µs |")
    print("|---|---|---|---:|---:|---:|")
    for shape in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            samples = measure(shape, dtype, args.rounds, args.inner)
            for name in forwards(shape):
                direct, engine = (statistics.median(samples[name, path]) * 1e6 for path in (False, True))
                print(f"| {shape} | {str(dtype).removeprefix('torch.')} | {name} | {direct:.0f} | {engine:.0f} | "
                      f"{engine - direct:.0f} |", flush=True)


if __name__ == "__main__":
    main()
