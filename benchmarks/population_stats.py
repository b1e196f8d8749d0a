"""Population statistics of the CNN (BN before the activation), the step every trial ends with:
exact moments of each BN layer's input over the 110,000 mirrored training images, layer by
layer. Timed for prediction batches of 1000 (the old setting) and 128 (`train.EVAL_BATCH`),
same run, with the ratio; both give the same statistics to float32 rounding.

    python benchmarks/population_stats.py
"""

from __future__ import annotations

import time

import torch

from bnrun import data as data_mod
from bnrun.models import build_model
from bnrun.nn.population import recompute_population_statistics
from bnrun.train import EVAL_BATCH


def seconds(model, images, batch_size: int) -> tuple[float, dict]:
    batches = lambda: data_mod.consecutive_batches(images, batch_size)  # noqa: E731
    start = time.perf_counter()
    result = recompute_population_statistics(model, batches)
    return time.perf_counter() - start, result


def main() -> None:
    images = data_mod.load(None, None).train.training_distribution(True)
    torch.manual_seed(0)
    model = build_model("cnn", "pre", "custom", False)
    old, old_stats = seconds(model, images, 1000)
    new, new_stats = seconds(model, images, EVAL_BATCH)
    worst = max(((a[1] - b[1]).abs() / b[1]).max().item() for a, b in zip(new_stats.values(), old_stats.values()))
    print(f"| prediction batch | population statistics, CNN ({len(images):,} images) |")
    print("|---:|---:|")
    print(f"| 1000 | {old:.1f} s |")
    print(f"| {EVAL_BATCH} | {new:.1f} s ({new / old:.2f}×) |")
    print(f"largest relative difference in a variance between the two: {worst:.1e}")


if __name__ == "__main__":
    main()
