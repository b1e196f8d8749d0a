"""The fused paths (C++ kernel on CPU, torch.compile elsewhere) match the eager reference and
torch.nn, pass gradcheck, and fall back to eager with a warning where they cannot be built."""

from __future__ import annotations

import pytest
import torch

import bnrun.nn as bnn
from bnrun.nn import fused
from bnrun.nn.functional import batch_norm_train_and_track

CASES = [
    (bnn.BatchNorm2d, (16, 4, 6, 6), {}),
    (bnn.BatchNorm1d, (32, 8), {}),
    (bnn.BatchNorm1d, (8, 5, 7), {"momentum": None}),
    (bnn.BatchNorm1d, (32, 8), {"affine": False}),
    (bnn.BatchNorm2d, (4, 3, 5, 5), {"track_running_stats": False, "eps": 1e-3}),
]


def step_outputs(layer, x, upstream):
    xi = x.clone().requires_grad_(True)
    y = layer(xi)
    y.backward(upstream)
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    return [y.detach(), xi.grad, *grads, *[b.clone() for b in layer.buffers()]]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("cls,shape,kwargs", CASES)
def test_fused_cpu_kernel_matches_eager_and_torch(cls, shape, kwargs, dtype, tol):
    assert fused.cpu_kernel() is not None, "the C++ kernel must build here (CI has g++ and ninja)"
    torch.manual_seed(0)
    eager, fast = cls(shape[1], dtype=dtype, **kwargs), cls(shape[1], dtype=dtype, fused=True, **kwargs)
    reference = getattr(torch.nn, cls.__name__)(shape[1], dtype=dtype, **kwargs)
    if eager.affine:
        with torch.no_grad():
            eager.weight.uniform_(0.5, 1.5), eager.bias.normal_()
    fast.load_state_dict(eager.state_dict())
    reference.load_state_dict(eager.state_dict())
    for _ in range(3):
        x = torch.randn(shape, dtype=dtype) * 2 + 1
        upstream = torch.randn(shape, dtype=dtype)
        expected = step_outputs(eager, x, upstream)
        for layer in (fast, reference):
            for a, b in zip(expected, step_outputs(layer, x, upstream), strict=True):
                torch.testing.assert_close(b, a, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("cls,shape", [(bnn.BatchNorm2d, (16, 4, 6, 6)), (bnn.BatchNorm1d, (32, 8))])
def test_fused_relu_matches_batch_norm_then_relu(cls, shape, dtype, tol):
    """relu=True: the kernel's g(BN(x)) equals torch.nn's BN followed by nn.ReLU, in training
    (output, gradients, running statistics) and in prediction mode."""
    torch.manual_seed(0)
    fast = cls(shape[1], dtype=dtype, fused=True, relu=True)
    reference = torch.nn.Sequential(getattr(torch.nn, cls.__name__)(shape[1], dtype=dtype), torch.nn.ReLU())
    with torch.no_grad():
        fast.weight.uniform_(0.5, 1.5), fast.bias.normal_()
    reference[0].load_state_dict(fast.state_dict())
    for _ in range(3):
        x = torch.randn(shape, dtype=dtype) * 2 + 1
        upstream = torch.randn(shape, dtype=dtype)
        got, want = step_outputs(fast, x, upstream), step_outputs(reference, x, upstream)
        assert (got[0] == 0).float().mean() > 0.2  # the ReLU is doing something
        for a, b in zip(want, got, strict=True):
            torch.testing.assert_close(b, a, atol=tol, rtol=tol)
    fast.eval(), reference.eval()
    x = torch.randn(shape, dtype=dtype)
    torch.testing.assert_close(fast(x), reference(x), atol=tol, rtol=tol)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_fused_model_computes_the_unfused_model_with_the_same_state_dict_keys(arch):
    from bnrun.models import build_model

    torch.manual_seed(0)
    plain = build_model(arch, "pre", "custom", fused=False)
    fast = build_model(arch, "pre", "custom", fused=True)
    assert list(plain.state_dict()) == list(fast.state_dict())
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(16, 1, 28, 28)
    torch.testing.assert_close(fast(x), plain(x), atol=1e-5, rtol=1e-5)
    fast.eval(), plain.eval()
    torch.testing.assert_close(fast(x), plain(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (3, 2, 3, 4)])
def test_cpu_kernel_gradcheck(shape, relu):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    kernel = fused.cpu_kernel()
    assert torch.autograd.gradcheck(lambda *t: kernel.train(*t, None, None, 0.0, 1e-5, relu), (x, weight, bias))


@pytest.mark.parametrize("shape", [(4096, 8), (64, 4, 32, 32)])
def test_cpu_kernel_statistics_stay_accurate_for_offset_inputs(shape):
    """Large batches far from zero (mean 100, std 0.1) are where naive float32 sums cancel; the
    kernel's blocked/merged sums must stay close to a float64 reference."""
    torch.manual_seed(0)
    x = torch.randn(shape) * 0.1 + 100
    layer = (bnn.BatchNorm2d if len(shape) == 4 else bnn.BatchNorm1d)(shape[1], fused=True)
    y = layer(x)
    reference = bnn.BatchNorm2d if len(shape) == 4 else bnn.BatchNorm1d
    expected = reference(shape[1], dtype=torch.float64)(x.double())
    torch.testing.assert_close(y.double(), expected, atol=5e-4, rtol=0)  # measured 8e-5
    exact_var = x.double().var(dim=[d for d in range(x.dim()) if d != 1])
    batch_var = (layer.running_var.double() - 0.9) / 0.1  # one step from 1 with momentum 0.1
    torch.testing.assert_close(batch_var, exact_var, rtol=2e-4, atol=0)  # measured 3e-5


def test_cpu_kernel_build_failure_warns_and_trains_eagerly(monkeypatch):
    from torch.utils import cpp_extension

    def no_compiler(*_args, **_kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    fused.cpu_kernel.cache_clear()
    try:
        layer, eager = bnn.BatchNorm1d(3, fused=True), bnn.BatchNorm1d(3)
        x = torch.randn(8, 3)
        with pytest.warns(RuntimeWarning, match="fused batch norm unavailable .*Ninja is required"):
            y = layer(x)
        torch.testing.assert_close(y, eager(x))
        torch.testing.assert_close(layer.running_var, eager.running_var)
        torch.testing.assert_close(bnn.BatchNorm1d(3, fused=True, relu=True)(x), torch.relu(eager(x)))
    finally:
        fused.cpu_kernel.cache_clear()


def test_half_precision_on_cpu_takes_the_eager_path():
    layer, eager = bnn.BatchNorm1d(3, fused=True).to(torch.bfloat16), bnn.BatchNorm1d(3).to(torch.bfloat16)
    x = torch.randn(8, 3, dtype=torch.bfloat16)
    torch.testing.assert_close(layer(x), eager(x))


def test_kernels_are_created_once_per_process():
    assert fused.cpu_kernel() is fused.cpu_kernel()
    assert fused.compiled_kernel() is fused.compiled_kernel()


# The torch.compile path serves non-CPU devices; it is exercised here on CPU tensors directly.


def test_compiled_kernel_matches_eager():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(16, 4, 5, 5), torch.rand(4), torch.randn(4)
    stats = [torch.zeros(4), torch.ones(4)], [torch.zeros(4), torch.ones(4)]
    expected = batch_norm_train_and_track(x, weight, bias, *stats[0], 0.1)
    got = fused.compiled_kernel()(x, weight, bias, *stats[1], torch.tensor(0.1), 1e-5)
    torch.testing.assert_close(got, expected)
    for a, b in zip(*stats):
        torch.testing.assert_close(a, b)


def test_compiled_kernel_with_relu_matches_eager():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(16, 4, 5, 5), torch.rand(4), torch.randn(4)
    expected = torch.relu(batch_norm_train_and_track(x, weight, bias, None, None, 0.0))
    got = fused.compiled_kernel(relu=True)(x, weight, bias, None, None, torch.tensor(0.0), 1e-5)
    torch.testing.assert_close(got, expected)


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


def test_changing_factor_does_not_recompile():
    torch._dynamo.reset()
    fused.compiled_kernel.cache_clear()
    kernel = fused.compiled_kernel()
    running = torch.zeros(4), torch.ones(4)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(1, 5):  # momentum=None: a new EMA factor 1/step each step
            kernel(torch.randn(8, 4), None, None, *running, torch.tensor(1.0 / step), 1e-5)
