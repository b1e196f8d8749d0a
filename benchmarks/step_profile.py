"""Where a default training step's time goes: the CNN and the MLP on `bnrun train`'s default path
(BN before the activation, fused, channels_last CNN, `--precision auto` resolved for this CPU, the
trial's own optimizer), with bnrun's BN and with torch's, on one batch of 128 synthetic images.
torch.profiler records the same steps of both; each op's self CPU time (its own time, not its
children's) is summed by kind and given per step, with its share of the profiled step. The step
time without the profiler is measured in the same run, interleaved (median over rounds, and the
median of the rounds' paired ratios). The data pipeline is outside the step: the share of a real
epoch spent outside forward, backward and the optimizer is `train_throughput.py`'s last table.

    python benchmarks/step_profile.py [--steps 40] [--rounds 9]

Run it on a quiet machine: nothing else may use the CPU meanwhile.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from train_throughput import sgd_step  # benchmarks/, the script's own folder

from bnrun.config import AUTO_PRECISION, TrainConfig, resolve_precision
from bnrun.nn import fused
from bnrun.training.loop import make_optimizer
from bnrun.training.models import build_model
from bnrun.training.precision import bf16_unsupported

BATCH = 128
# Kinds of op, first match wins (op names lower-cased): what each op's self time is counted as.
KINDS = (
    ("batch norm", ("batch_norm", "bnrun", "trainfunction", "evalfunction")),
    ("convolution", ("conv",)),
    ("linear", ("addmm", "aten::mm", "linear", "aten::t")),
    ("pooling", ("pool",)),
    ("activation", ("relu", "threshold")),
    ("loss", ("entropy", "softmax", "nll")),
    ("optimizer", ("_foreach", "sgd", "lerp")),
    ("gradient accumulation", ("accumulategrad", "aten::add_")),
    ("casts and copies", ("copy", "_to_copy", "aten::to", "clone", "contiguous")),
    ("allocation and zeroing", ("empty", "zero", "fill", "resize")),
)
IMPLS = {"bnrun (fused)": "custom", "torch": "torch"}


def kind_of(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, keys in KINDS if any(key in lowered for key in keys)), "other")


def label_batch_norm(model: torch.nn.Module) -> None:
    """bnrun's eager calls reach the kernel through its own binding, which the profiler does not see as an
    op: each BN layer's forward is recorded as a range named "bnrun batch norm" instead (its backward is the
    autograd node `TrainFunction`)."""
    ranges = []  # the open range of the layer running now (BN layers do not nest)
    for module in model.modules():
        if type(module).__module__.startswith("bnrun.nn"):
            module.register_forward_pre_hook(lambda *_: ranges.append(record_function("bnrun batch norm").__enter__()))
            module.register_forward_hook(lambda *_: ranges.pop().__exit__(None, None, None))


def make_step(arch: str, impl: str):
    """One SGD step of `bnrun train`'s default trial, its BN layers labelled for the profiler, and its precision."""
    step, precision, model = default_step(arch, impl)
    label_batch_norm(model)
    return step, precision


def default_step(arch: str, impl: str = "custom"):
    """One SGD step of `bnrun train`'s default trial (its model, layout, precision and optimizer), its
    precision and its model."""
    precision = resolve_precision(AUTO_PRECISION, arch, not bf16_unsupported("cpu"))
    channels_last = arch == "cnn"
    torch.manual_seed(0)
    model = build_model(arch, "pre", impl, impl == "custom", channels_last).train()
    optimizer = make_optimizer(TrainConfig(arch=arch), model)
    x = torch.randn(BATCH, 1, 28, 28)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,))
    return sgd_step(model, optimizer, x, y, precision), precision, model


def step_times(steps: dict, rounds: int, inner: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(rounds):
        names = list(steps)[round_ % 2:] + list(steps)[:round_ % 2]
        for name in names:
            steps[name]()
            start = time.perf_counter()
            for _ in range(inner):
                steps[name]()
            times[name].append((time.perf_counter() - start) / inner)
    return times


def self_times(step, count: int) -> dict[str, float]:
    """Seconds per step of each kind of op, from torch.profiler's self CPU times."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(count):
            step()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        kind = kind_of(event.key)
        totals[kind] = totals.get(kind, 0.0) + event.self_cpu_time_total / 1e6 / count
    return totals


def report(arch: str, count: int, rounds: int) -> None:
    made = {name: make_step(arch, impl) for name, impl in IMPLS.items()}
    steps = {name: step for name, (step, _) in made.items()}
    precision = next(iter(made.values()))[1]
    for step in steps.values():  # warm-up: the kernel's build, oneDNN's primitives
        for _ in range(5):
            step()
    times = step_times(steps, rounds, max(1, count // 4))
    ours, theirs = times.values()
    ratio = statistics.median(a / b for a, b in zip(ours, theirs))
    profiles = {name: self_times(step, count) for name, step in steps.items()}
    print(f"\n{arch.upper()} ({precision}{', channels_last' if arch == 'cnn' else ''}): step "
          + ", ".join(f"{name} {1e3 * statistics.median(t):.2f} ms" for name, t in times.items())
          + f"; bnrun / torch {ratio:.2f}× (median of {rounds} paired rounds, without the profiler)\n")
    print("| kind of op | " + " | ".join(f"{name}: ms per step | share" for name in IMPLS) + " |")
    print("|---|" + "---:|---:|" * len(IMPLS))
    kinds = [kind for kind, _ in KINDS] + ["other"]
    sums = {name: sum(profile_.values()) for name, profile_ in profiles.items()}
    for kind in kinds + ["profiled step"]:
        cells = []
        for name, profile_ in profiles.items():
            seconds = sums[name] if kind == "profiled step" else profile_.get(kind, 0.0)
            cells.append(f"{1e3 * seconds:.2f} | {100 * seconds / sums[name]:.0f} %")
        print(f"| {kind} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="profiled steps per variant")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds of the unprofiled timing")
    args = parser.parse_args()
    fused.cpu_kernel()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fused kernel built for "
          f"{fused.kernel_isa()} (version {fused.KERNEL_VERSION}); batch {BATCH}, BN before the activation")
    for arch in ("cnn", "mlp"):
        report(arch, args.steps, args.rounds)


if __name__ == "__main__":
    main()
