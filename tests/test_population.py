"""Population statistics are the exact moments of each BN layer's input over the dataset,
with the layers before it already in prediction mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bnrun.nn as bnn
from bnrun.nn.population import RunningMoments, recompute_population_statistics


def three_bn_model(fused: bool = False) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), bnn.BatchNorm2d(4, fused=fused), nn.ReLU(),
        nn.Conv2d(4, 3, 3), nn.ReLU(), bnn.BatchNorm2d(3, fused=fused),
        nn.Flatten(), nn.Linear(3 * 4 * 4, 6), bnn.BatchNorm1d(6, fused=fused), nn.Linear(6, 2),
    )


@pytest.mark.parametrize("fused,channels_last", [(False, False), (True, True)], ids=["eager-nchw", "fused-channels_last"])
def test_population_statistics_exact_over_uneven_batches(fused, channels_last):
    """Also on the default trial path: channels_last activations, the kernel's prediction-mode pass
    and its one-read per-batch moments."""
    torch.manual_seed(0)
    model = three_bn_model(fused)
    data = torch.randn(1003, 1, 8, 8) * 2 + 0.5
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    for start in range(0, 1003, 64):  # some training so the running averages are not the answer
        model(data[start:start + 64])
    batches = lambda: (data[i:i + 64] for i in range(0, len(data), 64))  # noqa: E731 - 1003 = 15·64 + 43
    result = recompute_population_statistics(model, batches)
    assert not model.training

    # Direct computation, layer by layer, on the whole dataset at once, in float64.
    expected = data.double()
    reference = three_bn_model().double()
    reference.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    reference.eval()
    layers = [1, 5, 8]
    x = expected
    with torch.no_grad():
        for index, module in enumerate(reference):
            if index in layers:
                dims = (0, 2, 3) if x.dim() == 4 else (0,)
                mean, var = x.mean(dims), x.var(dims, unbiased=True)
                name = str(index)
                torch.testing.assert_close(result[name][0].double(), mean, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(result[name][1].double(), var, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(model[index].running_mean.double(), mean, atol=1e-5, rtol=1e-5)
            x = module(x)
    assert set(result) == {"1", "5", "8"}


def test_running_moments_merge_equals_direct():
    torch.manual_seed(1)
    x = torch.randn(1003, 5, dtype=torch.float64) * 4 + 2
    moments = RunningMoments()
    for chunk in x.split(64):
        moments.add(chunk)
    assert moments.count == 1003
    torch.testing.assert_close(moments.mean, x.mean(0), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(moments.unbiased_var(), x.var(0), atol=1e-12, rtol=1e-12)


def test_model_without_bn_is_untouched():
    model = nn.Sequential(nn.Linear(3, 2))
    assert recompute_population_statistics(model, lambda: iter([torch.randn(4, 3)])) == {}


def test_running_moments_of_float32_batches_with_a_large_offset():
    """Per-batch moments in float32 (two passes), merged in float64: as exact as float32 data allows,
    also far from zero, where a one-pass E[x²] − E[x]² would lose every digit."""
    torch.manual_seed(2)
    x = torch.randn(4096, 3, 6, 6, dtype=torch.float64) * 0.5 + 1e4
    moments = RunningMoments()
    for chunk in x.float().split(500):
        moments.add(chunk)
    data = x.float().double()
    torch.testing.assert_close(moments.mean, data.mean((0, 2, 3)), atol=0, rtol=1e-6)
    torch.testing.assert_close(moments.unbiased_var(), data.var((0, 2, 3)), atol=0, rtol=1e-4)
