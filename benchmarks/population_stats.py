"""Population statistics of the CNN (BN before the activation), the step every trial ends with:
exact moments of each BN layer's input over the 110,000 mirrored training images, layer by
layer, in prediction batches of `train.EVAL_BATCH`. Timed in the same run for

  reference  the fp32 NCHW model with the eager BN, each batch's moments in eager tensor ops;
  default    the channels_last model with the fused BN (prediction mode as one C++ pass, ReLU
             included) and each batch's moments from one read by the C++ kernel;

with the ratio, and the largest relative difference between the two results' variances.

    python benchmarks/population_stats.py
"""

from __future__ import annotations

import time
from unittest import mock

import torch

from bnrun.nn import population
from bnrun.nn.fused import cpu_kernel
from bnrun.training import data as data_mod
from bnrun.training.evaluation import EVAL_BATCH
from bnrun.training.models import build_model


def seconds(model, images) -> tuple[float, dict]:
    batches = lambda: data_mod.consecutive_batches(images, EVAL_BATCH)  # noqa: E731
    start = time.perf_counter()
    result = population.recompute_population_statistics(model, batches)
    return time.perf_counter() - start, result


def model(fused: bool, channels_last: bool):
    torch.manual_seed(0)
    return build_model("cnn", "pre", "custom", fused, channels_last)


def main() -> None:
    images = data_mod.load(None, None).train.training_distribution(True)
    assert cpu_kernel() is not None, "the C++ kernel did not build here"
    with mock.patch.object(population.fused, "moments", lambda _x: None):  # eager per-batch moments
        old, old_stats = seconds(model(False, False), images)
    new, new_stats = seconds(model(True, True), images)
    worst = max(((a[1] - b[1]).abs() / b[1]).max().item() for a, b in zip(new_stats.values(), old_stats.values()))
    print(f"| path | population statistics, CNN ({len(images):,} images, batches of {EVAL_BATCH}) |")
    print("|---|---:|")
    print(f"| reference (fp32, NCHW, eager) | {old:.1f} s |")
    print(f"| default (fp32, channels_last, fused) | {new:.1f} s ({new / old:.2f}×) |")
    print(f"largest relative difference in a variance between the two: {worst:.1e}")


if __name__ == "__main__":
    main()
