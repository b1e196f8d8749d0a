"""Training throughput: images/s of one SGD step for the MLP and the CNN with BN none, torch's
BatchNorm, bnrun's custom BN (eager) and custom BN (fused), with ratios to torch measured in the
same run; then the share of a real epoch spent outside forward/backward/step (data handling).

    python benchmarks/train_throughput.py           # full measurement
    python benchmarks/train_throughput.py --quick   # fewer repetitions
    python benchmarks/train_throughput.py --channels-last [--precision bf16] --steps-only
                                                    # the CNN in channels_last (and bf16 autocast)
    python benchmarks/train_throughput.py --prediction [--channels-last] [--precision bf16]
                                                    # the CNN's prediction-mode work instead

With --prediction, what a trial does after training, for the CNN with torch's BN and with the
fused custom BN (its ReLU in the BN's output pass), in the same layout and precision: evaluation
(prediction-mode forward over a split) and population statistics (`bnrun.nn.population`), on
synthetic images, interleaved in rounds like the steps.

Step timings are interleaved across variants in rounds; the table gives the median time per
step and the median over rounds of each round's ratio to torch's BN (paired, so that this VM's
drifts in speed cancel).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from bnrun.config import TrainConfig
from bnrun.nn import recompute_population_statistics
from bnrun.run.progress import SilentReporter
from bnrun.training import data as data_mod
from bnrun.training.loop import make_optimizer, make_scheduler, steps_per_epoch, train_epoch
from bnrun.training.models import build_model
from bnrun.training.precision import autocast

VARIANTS = {"none": ("none", "custom", False), "torch": ("pre", "torch", False),
            "custom eager": ("pre", "custom", False), "custom fused": ("pre", "custom", True)}
BATCH = 128


def make_step(arch: str, bn: str, impl: str, fused: bool, x, y, channels_last: bool = False, precision: str = "fp32"):
    torch.manual_seed(0)
    model = build_model(arch, bn, impl, fused, channels_last).train()
    return sgd_step(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), x, y, precision)


def sgd_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x, y, precision: str):
    """One training step of `model` on the batch (x, y): forward under autocast, loss, backward, update."""

    def step() -> None:
        with autocast(precision, "cpu"):
            logits = model(x).float()
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def step_times(arch: str, repeats: int, inner: int, channels_last: bool = False, precision: str = "fp32") -> dict[str, list[float]]:
    """Seconds per step for each variant, one sample per round; a round times every variant back
    to back, so a round's ratios share the machine's state of that moment."""
    x, y = torch.randn(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,))
    steps = {name: make_step(arch, *spec, x, y, channels_last and arch == "cnn", precision) for name, spec in VARIANTS.items()}
    for step in steps.values():
        for _ in range(3):  # warm-up (compilation for the fused variant)
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(inner):
                step()
            samples[name].append((time.perf_counter() - start) / inner)
    return samples


PREDICTION_IMAGES = 5_120
PREDICTION_BATCH = 128  # as bnrun's evaluation and population statistics (training.evaluation.EVAL_BATCH)


def prediction_times(repeats: int, channels_last: bool, precision: str) -> dict[str, dict[str, list[float]]]:
    """Seconds per pass over PREDICTION_IMAGES of evaluation and of population statistics, for the
    CNN with torch's BN and with the fused custom BN, one sample per round."""
    images = torch.randn(PREDICTION_IMAGES, 1, 28, 28)

    def batches():
        return (images[start:start + PREDICTION_BATCH] for start in range(0, PREDICTION_IMAGES, PREDICTION_BATCH))

    def evaluate(model) -> None:
        model.eval()
        with torch.no_grad(), autocast(precision, "cpu"):
            for x in batches():
                model(x)

    def population(model) -> None:
        with autocast(precision, "cpu"):
            recompute_population_statistics(model, batches)

    torch.manual_seed(0)
    models = {name: build_model("cnn", "pre", impl, fused, channels_last)
              for name, (_, impl, fused) in VARIANTS.items() if name in ("torch", "custom fused")}
    samples: dict[str, dict[str, list[float]]] = {}
    for task, run in (("evaluation", evaluate), ("population statistics", population)):
        samples[task] = {name: [] for name in models}
        for model in models.values():  # warm-up
            run(model)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                run(model)
                samples[task][name].append(time.perf_counter() - start)
    return samples


def print_prediction(repeats: int, channels_last: bool, precision: str) -> None:
    print("| task | torch BN s | custom fused s | custom fused / torch BN (median of paired ratios) |")
    print("|---|---:|---:|---:|")
    for task, times in prediction_times(repeats, channels_last, precision).items():
        ratio = statistics.median(a / b for a, b in zip(times["custom fused"], times["torch"]))
        print(f"| {task} | {statistics.median(times['torch']):.3f} | {statistics.median(times['custom fused']):.3f} "
              f"| {ratio:.2f}× |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--channels-last", action="store_true", help="the CNN in channels_last order")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: under autocast")
    parser.add_argument("--steps-only", action="store_true", help="skip the epoch measurement")
    parser.add_argument("--prediction", action="store_true",
                        help="time the CNN's evaluation and population statistics instead of training steps")
    args = parser.parse_args()
    repeats, inner, images = (3, 3, 5_000) if args.quick else (15, 10, None)  # None: the full training split
    layout = "channels_last" if args.channels_last else "NCHW"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, {args.precision}, CNN in {layout}")
    if args.prediction:
        print_prediction(3 if args.quick else 7, args.channels_last, args.precision)
        return
    print("| arch | variant | ms / step | images / s | step time / torch BN (median of paired ratios) |")
    print("|---|---|---:|---:|---:|")
    for arch in ("mlp", "cnn"):
        samples = step_times(arch, repeats, inner, args.channels_last, args.precision)
        for name, values in samples.items():
            seconds = statistics.median(values)
            ratio = statistics.median(a / b for a, b in zip(values, samples["torch"]))
            print(f"| {arch} | {name} | {seconds * 1e3:.2f} | {BATCH / seconds:,.0f} | {ratio:.2f}× |", flush=True)
    if args.steps_only:
        return
    print()
    print("| arch | images | epoch seconds (custom eager, median of epochs 2-4) | outside forward/backward/step: median (each epoch) |")
    print("|---|---:|---:|---:|")
    for arch in ("mlp", "cnn"):
        count, total, shares = epoch_split(arch, images)
        each = ", ".join(f"{100 * share:.1f}" for share in shares)
        print(f"| {arch} | {count:,} | {total:.2f} | {100 * statistics.median(shares):.1f}% ({each}) |", flush=True)


def epoch_split(arch: str, images: int | None, epochs: int = 3) -> tuple[int, float, list[float]]:
    """Real epochs through bnrun's training loop, after a warm-up epoch that also builds the
    once-per-process mirrored copy of the data: (images, median epoch seconds, the share of each
    epoch spent outside fwd/bwd/step). `images=None` is the full training split, as `bnrun train`
    uses it."""
    dataset = data_mod.load(None, images)
    count = len(dataset.train)
    config = replace(TrainConfig(arch=arch, epochs=1), train_subset=images)
    torch.manual_seed(0)
    model = build_model(arch, "pre", "custom")
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(replace(config, epochs=epochs + 1), optimizer, steps_per_epoch(count, config.batch_size))
    generator = torch.Generator().manual_seed(0)
    train_epoch(model, optimizer, scheduler, dataset.train, config, generator, SilentReporter())
    totals, shares = [], []
    for _ in range(epochs):
        start = time.perf_counter()
        _, _, busy = train_epoch(model, optimizer, scheduler, dataset.train, config, generator, SilentReporter())
        totals.append(time.perf_counter() - start)
        shares.append((totals[-1] - busy) / totals[-1])
    return count, statistics.median(totals), shares


if __name__ == "__main__":
    main()
