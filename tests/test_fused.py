"""The fused (compiled) path matches the eager reference, and falls back with a warning."""

from __future__ import annotations

import pytest
import torch

import bnrun.nn as bnn
from bnrun.nn import fused
from bnrun.nn.functional import batch_norm_train_and_track


@pytest.mark.parametrize("cls,shape", [(bnn.BatchNorm2d, (16, 4, 6, 6)), (bnn.BatchNorm1d, (32, 8))])
def test_fused_matches_eager(cls, shape):
    torch.manual_seed(0)
    eager, compiled = cls(shape[1]), cls(shape[1], fused=True)
    compiled.load_state_dict(eager.state_dict())
    for _ in range(3):
        x = torch.randn(shape) * 2 + 1
        upstream = torch.randn(shape)
        outputs = []
        for layer in (eager, compiled):
            xi = x.clone().requires_grad_(True)
            y = layer(xi)
            y.backward(upstream)
            outputs.append((y.detach(), xi.grad, layer.weight.grad.clone(), layer.bias.grad.clone()))
            layer.zero_grad()
        for a, b in zip(*outputs):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eager.running_var, compiled.running_var)


def test_compile_unavailable_falls_back_with_warning(monkeypatch):
    def no_compiler(*_args, **_kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", no_compiler)
    with pytest.warns(RuntimeWarning, match="fused batch norm unavailable .*no C\\+\\+ compiler"):
        kernel = fused._CompiledOrEager(batch_norm_train_and_track)
    x = torch.randn(8, 3)
    expected = batch_norm_train_and_track(x, None, None, None, None, 0.0)
    torch.testing.assert_close(kernel(x, None, None, None, None, 0.0), expected)


def test_compile_failure_at_first_call_falls_back_once(monkeypatch):
    calls = []

    def broken_compiled(*_args):
        calls.append(1)
        raise RuntimeError("backend compiler failed")

    monkeypatch.setattr(torch, "compile", lambda fn, **_kwargs: broken_compiled)
    kernel = fused._CompiledOrEager(batch_norm_train_and_track)
    x = torch.randn(8, 3)
    with pytest.warns(RuntimeWarning, match="backend compiler failed"):
        kernel(x, None, None, None, None, 0.0)
    kernel(x, None, None, None, None, 0.0)
    assert calls == [1]  # never retried: compilation cost is paid (or skipped) once per process


def test_kernel_is_created_once_per_process():
    assert fused.train_kernel() is fused.train_kernel()


def test_momentum_none_does_not_recompile_each_step():
    torch._dynamo.reset()
    fused.train_kernel.cache_clear()
    layer = bnn.BatchNorm1d(4, momentum=None, fused=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        layer(torch.randn(8, 4))  # first call compiles
        for _ in range(3):
            layer(torch.randn(8, 4))  # a new EMA factor each step: no recompilation allowed
    assert layer.num_batches_tracked.item() == 4
