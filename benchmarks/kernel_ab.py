"""This checkout's fused kernel against another commit's, in one process: both builds loaded side by
side, their training (or prediction) operators timed in alternating order on the same tensors, at
bn_layer.py's shapes.

Timing the two builds in separate processes, one after the other, does not separate them on the
project's VMs: two processes of the same build differed by up to 1.6× on a row, where the two builds
loaded in one process and alternated call by call agree within ±3 % on rows whose code neither
changed. So the other commit's kernel sources (`bnrun/nn/csrc/`, read with `git show`) are built for
this machine's vector instruction set under an operator namespace of their own
(`torch.ops.bnrun_ab_<commit>`), next to this checkout's `torch.ops.bnrun`.

Both are called below the autograd dispatch key, so that each call is the kernel's own passes, checks
and allocations, without the Python autograd formulas that `operators.py` registers for tracing.

Rounds alternate which build runs first; each timed sample follows an untimed call. The table gives
each build's median time and the median over rounds of the paired ratio (this checkout over the
other), with its interquartile range.

Before a row is timed, both builds run its operators on its tensors with the ReLU off and on, and the
"differing" column counts the output values (y, the saved statistics, dx, dγ, dβ; or the prediction
output and its coefficients) whose bits differ: 0 for a change that keeps the kernel's results, as a
change must that keeps its version (kernel_build.KERNEL_VERSION).

    python benchmarks/kernel_ab.py COMMIT [--passes train|eval] [--rounds N]

Run it on a quiet machine, with bn_layer.py's glibc thresholds
(MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184) for the same reason.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils import cpp_extension

from bnrun.nn import fused
from bnrun.nn.kernel_build import HEADERS, SOURCES, compiler_flags, kernel_isa

REPO = Path(__file__).resolve().parents[1]
CSRC_FILES = [path.name for path in (*SOURCES, *HEADERS)]
SHAPES = [(128, 32, 28, 28), (128, 64, 14, 14), (128, 256), (128, 128)]
CASES = [(dtype, layout) for dtype in (torch.float32, torch.bfloat16) for layout in ("nchw", "channels_last")]
SAMPLE_SECONDS = 0.002  # each sample repeats a call until about this long


def resolve(commit: str) -> str:
    result = subprocess.run(["git", "rev-parse", "--short=12", f"{commit}^{{commit}}"], cwd=REPO,
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"kernel_ab.py: {commit!r} is not a commit of {REPO}")
    return result.stdout.strip()


def other_operators(commit: str):
    """`commit`'s kernel, built for this machine's ISA under its own namespace: its torch.ops namespace."""
    namespace = f"bnrun_ab_{commit}"
    directory = Path(tempfile.gettempdir()) / namespace
    directory.mkdir(exist_ok=True)
    for name in CSRC_FILES:
        shown = subprocess.run(["git", "show", f"{commit}:bnrun/nn/csrc/{name}"], cwd=REPO, capture_output=True)
        if shown.returncode == 0:
            (directory / name).write_bytes(shown.stdout)
    sources = [str(directory / path.name) for path in SOURCES]
    flags = compiler_flags(kernel_isa(), namespace)
    print(f"building {commit}'s kernel for {kernel_isa()} (once per commit, ~30-60 s)", file=sys.stderr, flush=True)
    try:
        cpp_extension.load(name=namespace, sources=sources, extra_cflags=flags, extra_ldflags=["-fopenmp"],
                           build_directory=str(directory))
    except Exception as error:  # noqa: BLE001 - a compiler's or loader's failure, said in one line
        sys.exit(f"kernel_ab.py: {commit}'s kernel did not build: {str(error).splitlines()[0]}")
    return getattr(torch.ops, namespace)


def call(ops, passes: str, x, upstream, per_channel):
    weight, bias, mean, var = per_channel
    if passes == "eval":
        return lambda: ops.batch_norm_eval(x, mean, var, weight, bias, 1e-5, False)

    def train():
        y, stats = ops.batch_norm_train(x, weight, bias, 1e-5, False)
        del y
        ops.batch_norm_train_backward(upstream, x, stats, weight, False)
    return train


def outputs(ops, passes: str, x, upstream, per_channel, relu: bool) -> tuple[torch.Tensor, ...]:
    weight, bias, mean, var = per_channel
    if passes == "eval":
        return tuple(ops.batch_norm_eval(x, mean, var, weight, bias, 1e-5, relu))
    y, stats = ops.batch_norm_train(x, weight, bias, 1e-5, relu)
    return (y, stats, *ops.batch_norm_train_backward(upstream, x, stats, weight, relu))


def as_bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def differing(this, other, passes: str, x, upstream, per_channel) -> int:
    """How many output values of the two builds differ in their bits, with the ReLU off and on."""
    count = 0
    for relu in (False, True):
        pairs = zip(outputs(this, passes, x, upstream, per_channel, relu),
                    outputs(other, passes, x, upstream, per_channel, relu))
        count += sum(int((as_bits(a) != as_bits(b)).sum()) for a, b in pairs)
    return count


def repeats_for(fn) -> int:
    start = time.perf_counter()
    fn()
    return max(1, round(SAMPLE_SECONDS / max(time.perf_counter() - start, 1e-7)))


def sample(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def compare(this, other, shape, dtype, layout: str, passes: str, rounds: int) -> str:
    torch.manual_seed(0)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape).to(dtype).contiguous(memory_format=memory_format)
    upstream = torch.randn(shape).to(dtype).contiguous(memory_format=memory_format)
    channels = shape[1]
    per_channel = (torch.rand(channels) + 0.5, torch.rand(channels), torch.randn(channels), torch.rand(channels) + 0.5)
    different = differing(this, other, passes, x, upstream, per_channel)
    calls = [call(ops, passes, x, upstream, per_channel) for ops in (this, other)]
    repeats = repeats_for(calls[0])
    times: list[list[float]] = [[], []]
    for round_ in range(rounds):
        for which in ((0, 1) if round_ % 2 == 0 else (1, 0)):
            times[which].append(sample(calls[which], repeats))
    ratios = [a / b for a, b in zip(*times)]
    low, median, high = statistics.quantiles(ratios, n=4)
    return (f"| {tuple(shape)} | {str(dtype).removeprefix('torch.')} | {layout} | "
            f"{statistics.median(times[0]) * 1e3:.3f} | {statistics.median(times[1]) * 1e3:.3f} | "
            f"{statistics.median(ratios):.2f}× | {low:.2f}–{high:.2f} | {different} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commit", help="the commit whose kernel this checkout's is compared with")
    parser.add_argument("--passes", choices=("train", "eval"), default="train",
                        help="train: forward and backward operators; eval: the prediction-mode operator")
    parser.add_argument("--rounds", type=int, default=31, help="paired samples per row (at least 2)")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error(f"--rounds must be at least 2, got {args.rounds}")
    commit = resolve(args.commit)
    this, other = fused.cpu_kernel().ops, other_operators(commit)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, both kernels built for {kernel_isa()}; "
          f"{args.passes} operators, this checkout against {commit}, {args.rounds} rounds")
    print("| shape | dtype | layout | this ms | other ms | this / other | IQR | differing |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    gc.disable()
    with torch._C._AutoDispatchBelowAutograd():
        for dtype, layout in CASES:
            for shape in SHAPES:
                if layout == "channels_last" and len(shape) != 4:
                    continue
                print(compare(this, other, shape, dtype, layout, args.passes, args.rounds), flush=True)


if __name__ == "__main__":
    main()
