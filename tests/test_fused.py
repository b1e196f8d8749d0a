"""The fused paths (C++ kernel on CPU, torch.compile elsewhere) match the eager reference and
torch.nn, pass gradcheck, and fall back to eager with a warning where they cannot be built."""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import bnrun.nn as bnn
from bnrun.nn import fused, paths
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
    from bnrun.training.models import build_model

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
    assert torch.autograd.gradcheck(lambda *t: kernel.train(*t, None, None, 0.0, 1e-5, relu)[0], (x, weight, bias))


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


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "rows"])
def test_one_pass_moments_survive_an_outlier_where_the_pivot_is_taken(layout):
    """The moments take one pass around a pivot from each chunk's first values: an outlier there
    (10⁴ standard deviations off a mean of 100) must still give float64's variance."""
    torch.manual_seed(0)
    shape = (512, 40) if layout == "rows" else (64, 8, 20, 20)
    x = torch.randn(shape) + 100
    x.view(-1)[0] += 1e4
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    layer = (bnn.BatchNorm1d if layout == "rows" else bnn.BatchNorm2d)(shape[1], fused=True)
    layer(x)
    exact_var = x.double().var(dim=[d for d in range(x.dim()) if d != 1])
    torch.testing.assert_close((layer.running_var.double() - 0.9) / 0.1, exact_var, rtol=1e-5, atol=0)  # measured 7e-7


# (N, C, H, W) planes; channels_last rows of 48 channels (three register vectors: a group of 32 channels
# and one of 16) over an odd number of rows; (N, C) rows of 40 channels (32 by dot products, 8 one at a time).
BF16_SUM_SHAPES = {"nchw": (32, 6, 14, 14), "channels_last": (31, 48, 5, 3), "rows": (257, 40)}


@pytest.mark.parametrize("layout", list(BF16_SUM_SHAPES))
@pytest.mark.parametrize("offset", [0.0, 3.0, 300.0], ids=["centred", "mean-3-sd", "mean-300-sd"])
def test_bf16_sums_match_float64_wherever_the_mean_lies(offset, layout):
    """bfloat16 statistics and gradient sums, with the mean at 0, 3 and 300 standard deviations, in each
    layout: every build must give float64's variance, dγ and dβ. (The avx512-bf16 build sums x, x², dy and
    dy·x by dot products without a pivot below about 4 standard deviations, and takes the pivoted loops
    above.)"""
    torch.manual_seed(0)
    shape = BF16_SUM_SHAPES[layout]
    x = (torch.randn(shape) + offset).bfloat16()
    upstream = torch.randn(shape).bfloat16()
    if layout == "channels_last":
        x, upstream = (t.contiguous(memory_format=torch.channels_last) for t in (x, upstream))
    layer = (bnn.BatchNorm1d if layout == "rows" else bnn.BatchNorm2d)(shape[1], fused=True, momentum=1.0)
    xi = x.clone().requires_grad_(True)
    layer(xi).backward(upstream)
    xd, ud = x.double(), upstream.double()
    dims = [d for d in range(x.dim()) if d != 1]
    channel = [1, -1] + [1] * (x.dim() - 2)
    mean, var = xd.mean(dims), xd.var(dims, unbiased=False)
    x_hat = (xd - mean.view(channel)) / (var.view(channel) + layer.eps).sqrt()
    torch.testing.assert_close(layer.running_var.double(), xd.var(dims), rtol=1e-5, atol=0)
    torch.testing.assert_close(layer.bias.grad.double(), ud.sum(dims), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(layer.weight.grad.double(), (ud * x_hat).sum(dims), rtol=1e-4, atol=1e-3)


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


def test_bf16_parameters_take_the_eager_path_and_say_so():
    """bf16 activations with fp32 statistics are the kernel's; a layer converted wholesale to bf16
    (bf16 running statistics) is not: the eager path serves it, with one warning, and records it."""
    layer, eager = bnn.BatchNorm1d(3, fused=True).to(torch.bfloat16), bnn.BatchNorm1d(3).to(torch.bfloat16)
    x = torch.randn(8, 3, dtype=torch.bfloat16)
    paths.warn_once.cache_clear()
    with pytest.warns(RuntimeWarning, match="cannot serve this input .*bfloat16 parameters"):
        y = layer(x)
    torch.testing.assert_close(y, eager(x))
    assert layer.path == "eager"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per process, not once per batch
        layer(x)


LAYOUTS = {
    "nchw": (bnn.BatchNorm2d, torch.nn.BatchNorm2d, (16, 8, 6, 6), torch.contiguous_format),
    "channels_last": (bnn.BatchNorm2d, torch.nn.BatchNorm2d, (16, 8, 6, 6), torch.channels_last),
    "nc": (bnn.BatchNorm1d, torch.nn.BatchNorm1d, (64, 12), torch.contiguous_format),
}


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("fused_path", [False, True], ids=["eager", "fused"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, None)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dtype_and_layout_match_torch(layout, dtype, tol, fused_path, relu):
    """bf16 and channels_last input, as autocast and a channels_last CNN produce it: the same dtype
    and memory format out and back as torch.nn's layer given the same input, statistics and
    parameter gradients in fp32, everything within the dtype's rounding."""
    ours_cls, torch_cls, shape, memory_format = LAYOUTS[layout]
    torch.manual_seed(0)
    x = (torch.randn(shape) * 2 + 3).to(dtype).contiguous(memory_format=memory_format)
    upstream = torch.randn(shape).to(dtype).contiguous(memory_format=memory_format)
    reference = torch_cls(shape[1])
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-1, 1)
    ours = ours_cls(shape[1], fused=fused_path, relu=relu)
    ours.load_state_dict(reference.state_dict())
    expected = step_outputs_with(lambda t: torch.relu(reference(t)) if relu else reference(t), reference, x, upstream)
    got = step_outputs_with(ours, ours, x, upstream)
    assert ours.path == ("fused-cpu" if fused_path else "eager")
    y, grad_x = got[0], got[1]
    assert y.dtype == grad_x.dtype == dtype
    assert y.is_contiguous(memory_format=memory_format) and grad_x.is_contiguous(memory_format=memory_format)
    assert all(t.dtype == torch.float32 for t in got[2:6])  # dγ, dβ, running mean and variance
    # bf16: outputs within a couple of bf16 ulps (2**-8 relative), fp32 sums within fp32 rounding
    for index, (a, b) in enumerate(zip(got, expected)):
        if index < 2 and tol is None:
            torch.testing.assert_close(a.float(), b.float(), rtol=1.6e-2, atol=2e-2)
        else:
            close = 1e-3 if tol is None else tol
            torch.testing.assert_close(a.float(), b.float(), rtol=close, atol=close)


def step_outputs_with(forward, layer, x, upstream):
    xi = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    y = forward(xi)
    y.backward(upstream)
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    return [y.detach(), xi.grad, *grads, *[b.clone() for b in layer.buffers() if b.is_floating_point()]]


@pytest.mark.parametrize("fused_path", [False, True], ids=["eager", "fused"])
def test_channels_last_statistics_stay_accurate_for_offset_inputs(fused_path):
    """The kernel reads channels_last input as rows of channels, summed in blocks merged in double:
    a large batch far from zero must still give the float64 statistics."""
    torch.manual_seed(0)
    x = (torch.randn(64, 16, 28, 28) * 0.1 + 100).contiguous(memory_format=torch.channels_last)
    layer = bnn.BatchNorm2d(16, fused=fused_path)
    y = layer(x)
    expected = bnn.BatchNorm2d(16, dtype=torch.float64)(x.double())
    torch.testing.assert_close(y.double(), expected, atol=5e-4, rtol=0)
    exact_var = x.double().var(dim=(0, 2, 3))
    torch.testing.assert_close((layer.running_var.double() - 0.9) / 0.1, exact_var, rtol=2e-4, atol=0)


@pytest.mark.parametrize("fused_path", [False, True], ids=["eager", "fused"])
def test_channels_last_takes_no_hidden_layout_copy(fused_path):
    """Forward and backward on channels_last input copy no activation-sized tensor (a layout
    conversion would show up as aten::copy_/clone/contiguous on a 4D tensor)."""
    from torch.profiler import profile

    shape = (8, 4, 5, 5)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    upstream = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    layer = bnn.BatchNorm2d(4, fused=fused_path, relu=True)
    layer(x)  # the kernel is loaded outside the profile
    with profile(record_shapes=True) as prof:
        layer(x).backward(upstream)
    copies = [e.name for e in prof.events() if e.name in ("aten::copy_", "aten::clone", "aten::contiguous")
              and any(list(s) == list(shape) for s in e.input_shapes)]
    assert copies == []
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


PREDICTION_LAYOUTS = {
    "nc": ((64, 12), torch.contiguous_format),
    "ncl": ((16, 6, 9), torch.contiguous_format),
    "nchw": ((16, 8, 6, 7), torch.contiguous_format),
    "channels_last": ((16, 8, 6, 7), torch.channels_last),
}


def torch_layer_for(shape, channels):
    layer = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(channels)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
        layer.bias.copy_(torch.rand(channels, generator=generator) * 2 - 1)
        layer.running_mean.copy_(torch.randn(channels, generator=generator))
        layer.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
    return layer


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", PREDICTION_LAYOUTS)
def test_prediction_mode_matches_torch_with_gradients(layout, dtype, relu):
    """The fused path in prediction mode: output and the gradients to x, γ and β as torch.nn's
    layer in eval mode (then ReLU when `relu`), in the input's dtype and memory format."""
    shape, memory_format = PREDICTION_LAYOUTS[layout]
    torch.manual_seed(0)
    x = (torch.randn(shape) * 2 + 0.5).to(dtype).contiguous(memory_format=memory_format)
    upstream = torch.randn(shape).to(dtype).contiguous(memory_format=memory_format)
    reference = torch_layer_for(shape, shape[1]).eval()
    ours = (bnn.BatchNorm2d if len(shape) == 4 else bnn.BatchNorm1d)(shape[1], fused=True, relu=relu).eval()
    ours.load_state_dict(reference.state_dict())
    want = step_outputs_with(lambda t: torch.relu(reference(t)) if relu else reference(t), reference, x, upstream)
    got = step_outputs_with(ours, ours, x, upstream)
    assert got[0].dtype == got[1].dtype == dtype
    assert got[0].is_contiguous(memory_format=memory_format) and got[1].is_contiguous(memory_format=memory_format)
    if relu:
        assert (got[0] == 0).float().mean() > 0.1  # the ReLU is doing something
    for index, (a, b) in enumerate(zip(got, want, strict=True)):
        if dtype == torch.bfloat16 and index < 2:  # y and dx: within bf16 rounding
            torch.testing.assert_close(a.float(), b.float(), rtol=1.6e-2, atol=2e-2)
        else:
            torch.testing.assert_close(a.float(), b.float(), rtol=1e-4 if dtype == torch.bfloat16 else 1e-5, atol=1e-5)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (3, 2, 3, 4)])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_prediction_mode_gradcheck(shape, relu, channels_last):
    """The prediction-mode node's gradients to x, γ, β and the statistics themselves (float64)."""
    if channels_last and len(shape) != 4:
        pytest.skip("channels_last is a 4D layout")
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    channels = shape[1]
    inputs = (x.requires_grad_(True), torch.randn(channels, dtype=torch.float64, requires_grad=True),
              (torch.rand(channels, dtype=torch.float64) + 0.5).requires_grad_(True),
              (torch.rand(channels, dtype=torch.float64) + 0.5).requires_grad_(True),
              torch.randn(channels, dtype=torch.float64, requires_grad=True))
    kernel = fused.cpu_kernel()
    assert torch.autograd.gradcheck(lambda *t: kernel.eval(*t, 1e-5, relu)[0], inputs)


def test_prediction_mode_keeps_the_graph_and_refuses_double_backward():
    layer = bnn.BatchNorm2d(4, fused=True)
    x = torch.randn(8, 4, 3, 3)
    layer(x)
    layer.eval()
    y = layer(x.requires_grad_())
    assert y.requires_grad and y.grad_fn is not None
    (gx,) = torch.autograd.grad(y.sum(), x)
    scale = (layer.weight / torch.sqrt(layer.running_var + layer.eps)).view(1, 4, 1, 1)
    torch.testing.assert_close(gx, scale.expand_as(x))
    with pytest.raises(RuntimeError, match="double backward"):
        (gx,) = torch.autograd.grad(layer(x).pow(2).sum(), x, create_graph=True)
        gx.sum().backward()
    with torch.no_grad():
        assert not layer(x).requires_grad


def test_kernel_isa_is_this_machines_best_build():
    """The build the process uses holds the code kernel_isa() names, the best this CPU and torch's
    own dispatch allow."""
    kernel = fused.cpu_kernel()
    assert kernel.isa() == fused.kernel_isa() == fused.supported_isas()[0]
    assert fused.supported_isas()[-1] == "scalar"


def test_each_source_and_flag_set_builds_in_its_own_directory(monkeypatch):
    """The loaded build lives in a directory named after its sources and flags, never in torch's
    default one, which processes of older commits load; it reports the kernel version it was built with."""
    from bnrun.nn import kernel_build

    kernel, directory = fused.cpu_kernel(), kernel_build.build_directory()
    assert directory.name.startswith(kernel_build.KERNEL_NAME + "-")
    assert Path(kernel.module.__file__).parent == directory
    assert kernel.version == fused.KERNEL_VERSION
    monkeypatch.setattr(kernel_build, "KERNEL_VERSION", fused.KERNEL_VERSION + 1)
    assert kernel_build.build_directory() != directory
    monkeypatch.undo()
    monkeypatch.setitem(kernel_build.ISA_FLAGS, fused.kernel_isa(), [*kernel_build.ISA_FLAGS[fused.kernel_isa()], "-g"])
    assert kernel_build.build_directory() != directory


@pytest.mark.slow
def test_another_checkout_of_the_same_sources_loads_the_build_without_compiling(tmp_path):
    """The build compiles copies of the sources kept in its directory: a second checkout (here a copy of the
    package elsewhere) finds the same build and links nothing; the build file names no checkout's path."""
    from bnrun.nn import kernel_build

    fused.cpu_kernel()
    directory = kernel_build.build_directory()
    library = directory / f"{kernel_build.KERNEL_NAME}.so"
    built = library.stat().st_mtime_ns
    assert str(kernel_build.CSRC) not in (directory / "build.ninja").read_text()
    shutil.copytree(Path(bnn.__file__).parents[1], tmp_path / "bnrun")
    probe = "from bnrun.nn import fused, kernel_build; print(fused.cpu_kernel().version, kernel_build.CSRC)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(fused.KERNEL_VERSION), str(tmp_path / "bnrun" / "nn" / "csrc")]
    assert "building" not in done.stderr and library.stat().st_mtime_ns == built


def special_floats() -> torch.Tensor:
    """Ties (round to even), values just around them, extremes, infinities, subnormals and ordinary
    randoms."""
    bits = torch.tensor([0x3F808000, 0x3F818000, 0x3F808001, 0x3F817FFF, 0x7F7FFFFF, 0xFF7FFFFF, 0x00800000,
                         0x7F800000, 0xFF800000, 0x80000000, 0, 0x00018000, 0x80028001, 0x007FFFFF],
                        dtype=torch.int64).to(torch.int32)
    return torch.cat([bits.view(torch.float32), torch.randn(1000) * 1e3, torch.randn(37)])


def test_bfloat16_rounding_matches_torch():
    """float32 → bfloat16 by the kernel's output loop: round to nearest even, as torch's own
    conversion, bit for bit (normal numbers, infinities, and subnormals but where the build
    converts with AVX512-BF16's vcvtne2ps2bf16, which flushes them to zero of their sign); NaN
    stays NaN."""
    x = special_floats()
    got = fused.cpu_kernel().to_bf16(x)
    expected = x.to(torch.bfloat16)
    if fused.cpu_kernel().isa() == "avx512-bf16":
        subnormal = (x != 0) & (x.abs() < torch.finfo(torch.float32).tiny)
        assert subnormal[:32].sum() == 3  # among the first 32 values, which the instruction converts
        expected = torch.where(subnormal, torch.copysign(torch.zeros_like(x), x), x).to(torch.bfloat16)
    assert torch.equal(got.view(torch.int16), expected.view(torch.int16))
    nan = fused.cpu_kernel().to_bf16(torch.full((19,), float("nan")))
    assert torch.isnan(nan.float()).all()


# A pass whose tensors take the kernel's stream_bytes() or more (this machine's last-level cache; a quarter of it
# where the output is stored whole vectors at a time) streams its output (bn_cpu.cpp, streams_output; bfloat16
# output only in the avx512-bf16 build); the tests below lower the threshold to 1 MiB so that these shapes reach
# it in both dtypes. Planes of 899 values and rows of 40 channels start off the vector width.
STREAMED_CASES = [((64, 40, 29, 31), torch.contiguous_format), ((64, 40, 29, 31), torch.channels_last)]
STREAMED_THRESHOLD = 1 << 20
# Long pieces, streamed: planes of 2257 values, and rows of 1100 channels.
LONG_STREAMED_CASES = [((64, 16, 37, 61), torch.contiguous_format), ((128, 1100, 4, 4), torch.channels_last)]
KERNEL_CASES = [((64, 16, 28, 28), torch.channels_last), ((8, 3, 5, 7), torch.channels_last),
                ((300, 40), torch.contiguous_format), ((32, 6, 35), torch.contiguous_format),
                ((16, 5, 28, 28), torch.contiguous_format), *STREAMED_CASES]


def kernel_step(kernel, x, upstream, relu, reference):
    """One training step and one prediction through `kernel` directly, and the same through torch's
    float64 layer (`reference`; float32 sums over 50,000 values differ in the 5th digit between
    summation orders, and the kernel's are the closer ones)."""
    weight, bias = reference.weight.detach().float(), reference.bias.detach().float()
    running = (reference.running_mean.float(), reference.running_var.float())
    xi, w, b = (t.detach().clone().requires_grad_(True) for t in (x, weight, bias))
    y, why = kernel.train(xi, w, b, *running, 0.1, 1e-5, relu)
    assert why == ""
    y.backward(upstream)
    ours = [y.detach(), xi.grad, w.grad, b.grad, *running]
    xe = x.detach().clone().requires_grad_(True)
    ye, _ = kernel.eval(xe, *running, weight, bias, 1e-5, relu)
    ye.backward(upstream)
    ours += [ye.detach(), xe.grad]
    count, mean, squares = kernel.moments(x)
    ours += [mean.float(), (squares / (count - 1)).float()]

    x, upstream = x.double(), upstream.double()
    theirs = step_outputs_with(lambda t: torch.relu(reference(t)) if relu else reference(t), reference, x, upstream)
    theirs = theirs[:6]  # y, dx, dγ, dβ, running mean, running var
    reference.eval()
    xr = x.detach().clone().requires_grad_(True)
    yr = torch.relu(reference(xr)) if relu else reference(xr)
    yr.backward(upstream)
    theirs += [yr.detach(), xr.grad]
    dims = [0] + list(range(2, x.dim()))
    theirs += [x.mean(dims), x.var(dims)]
    return ours, theirs


@pytest.mark.slow  # each build takes 30-60 s, once per machine
@pytest.mark.isa
@pytest.mark.parametrize("isa", list(fused.ISA_FLAGS))
def test_every_build_this_cpu_can_run_matches_torch(isa):
    """Each of the kernel's builds (AVX-512 with and without AVX512-BF16, AVX2, plain loops) that
    this machine can run, built as its own extension: training step, prediction mode and moments
    against torch.nn, fp32 and bf16, contiguous and channels_last, with and without the ReLU, at
    shapes whose sizes leave vector tails and split into several chunks."""
    if isa not in fused.supported_isas():
        pytest.skip(f"this CPU (or torch's dispatch) cannot run the {isa} build: it runs {fused.supported_isas()}")
    kernel = fused.cpu_kernel(isa)
    assert kernel is not None and kernel.isa() == isa
    with streaming_from(kernel, STREAMED_THRESHOLD):  # the larger cases stream, STREAMED_CASES among them
        for (shape, memory_format), dtype, relu in itertools.product(KERNEL_CASES, (torch.float32, torch.bfloat16),
                                                                      (False, True)):
            assert_kernel_matches_torch(kernel, shape, memory_format, dtype, relu)
    for memory_format, relu in itertools.product((torch.contiguous_format, torch.channels_last), (False, True)):
        assert_a_nan_stays_in_its_channel(kernel, memory_format, relu)


def assert_kernel_matches_torch(kernel, shape, memory_format, dtype, relu) -> None:
    torch.manual_seed(0)
    x = (torch.randn(shape) * 2 + 1).to(dtype).contiguous(memory_format=memory_format)
    upstream = torch.randn(shape).to(dtype).contiguous(memory_format=memory_format)
    reference = torch_layer_for(shape, shape[1]).double()
    ours, theirs = kernel_step(kernel, x, upstream, relu, reference)
    for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        where = f"{kernel.isa()} {shape} {dtype} {memory_format} relu={relu} output {index}"
        rtol, atol = (1.6e-2, 3e-2) if dtype == torch.bfloat16 and index in (0, 1, 6, 7) else (1e-4, 1e-4)
        torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=atol,
                                   msg=lambda m, where=where: f"{where}: {m}")
    assert ours[0].is_contiguous(memory_format=memory_format) and ours[1].is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape,memory_format", STREAMED_CASES + LONG_STREAMED_CASES,
                         ids=["nchw", "channels_last", "nchw-long-rows", "channels_last-long-stripes"])
def test_streamed_outputs_match_torch(shape, memory_format, dtype, relu):
    """This machine's build with its outputs streamed: training step, prediction mode and moments
    against torch.nn in float64."""
    kernel = fused.cpu_kernel()
    assert kernel is not None
    assert 2 * math.prod(shape) * dtype.itemsize >= STREAMED_THRESHOLD  # every pass reaches it
    with streaming_from(kernel, STREAMED_THRESHOLD):
        assert_kernel_matches_torch(kernel, shape, memory_format, dtype, relu)


@contextlib.contextmanager
def streaming_from(kernel, threshold: int):
    """The kernel streams the outputs of passes whose tensors take `threshold` bytes or more."""
    previous = kernel.set_stream_bytes(threshold)
    try:
        yield
    finally:
        kernel.set_stream_bytes(previous)



REUSE_CASES = [((8, 12, 5, 7), torch.contiguous_format), ((8, 12, 5, 7), torch.channels_last), ((37, 20), None)]


@pytest.mark.parametrize("relu,streamed", [(False, False), (True, True)], ids=["cached", "relu-streamed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape,memory_format", REUSE_CASES, ids=["nchw", "channels_last", "rows"])
def test_an_output_gradient_nothing_else_holds_takes_dx(shape, memory_format, dtype, relu, streamed):
    """The layer's backward writes dx over dy where its node holds the only reference to dy (here
    the gradient of y · s), with the values of a fresh dx; a dy that a hook keeps, and any dy while
    the reuse is switched off, get a dx of their own, and the kept one is left as it was."""
    torch.manual_seed(0)
    layout = {} if memory_format is None else {"memory_format": memory_format}
    x, scale, upstream = (torch.randn(shape).to(dtype).contiguous(**layout) for _ in range(3))
    layer = (bnn.BatchNorm2d if len(shape) == 4 else bnn.BatchNorm1d)(shape[1], fused=True, relu=relu)
    kernel = fused.cpu_kernel()

    def step(keep: bool):
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        kept: list[torch.Tensor] = []
        if keep:
            y.register_hook(kept.append)
        before = kernel.grads_reused()
        (y * scale).backward(upstream)
        return xi.grad, kernel.grads_reused() - before, kept

    with streaming_from(kernel, 0 if streamed else kernel.stream_bytes()):
        reused, reuses, _ = step(keep=False)
        fresh, fresh_reuses, kept = step(keep=True)
        previous = kernel.set_reuse_grad(False)
        try:
            switched_off, off_reuses, _ = step(keep=False)
        finally:
            kernel.set_reuse_grad(previous)
    assert (reuses, fresh_reuses, off_reuses) == (1, 0, 0)
    torch.testing.assert_close(kept[0], upstream * scale, atol=0, rtol=0)
    torch.testing.assert_close(reused, fresh, atol=0, rtol=0)
    torch.testing.assert_close(switched_off, fresh, atol=0, rtol=0)


@pytest.mark.parametrize("streamed", [False, True], ids=["cached", "streamed"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 6, 14, 14), (4, 3, 5, 5), (40, 16, 14, 14)])
def test_prediction_output_has_the_same_bits_in_either_layout(shape, dtype, relu, streamed):
    """y = g(a·x + k) per element: NCHW planes, written as one run of stores that may span two planes
    (each lane with its own plane's coefficients), give the bits that channels_last rows give."""
    kernel = fused.cpu_kernel()
    assert kernel is not None
    torch.manual_seed(0)
    channels = shape[1]
    x = (torch.randn(shape) * 3 + 1).to(dtype)
    mean, var = torch.randn(channels), torch.rand(channels) + 0.5
    weight, bias = torch.rand(channels) + 0.5, torch.randn(channels)
    with streaming_from(kernel, 0 if streamed else 1 << 40), torch._C._AutoDispatchBelowAutograd():
        planes, _ = kernel.ops.batch_norm_eval(x, mean, var, weight, bias, 1e-5, relu)
        rows, _ = kernel.ops.batch_norm_eval(x.contiguous(memory_format=torch.channels_last), mean, var, weight, bias,
                                             1e-5, relu)
    assert planes.is_contiguous() and rows.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(planes.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                       rows.contiguous().view(torch.int16 if dtype == torch.bfloat16 else torch.int32))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
def test_streaming_changes_no_bit_of_a_training_step(memory_format, dtype, relu):
    """The training operators' outputs (y, the saved statistics, dx, dγ, dβ) are the same bits whether
    the output passes stream their stores or write them through the cache, at planes of 196 values
    (whole stores that span two planes) and rows of 24 channels."""
    kernel = fused.cpu_kernel()
    assert kernel is not None
    torch.manual_seed(0)
    shape = (32, 24, 14, 14)
    x, upstream = ((torch.randn(shape) * 3 + 1).to(dtype).contiguous(memory_format=memory_format) for _ in range(2))
    weight, bias = torch.rand(shape[1]) + 0.5, torch.randn(shape[1])
    outputs = []
    for threshold in (0, 1 << 40):
        with streaming_from(kernel, threshold), torch._C._AutoDispatchBelowAutograd():
            y, stats = kernel.ops.batch_norm_train(x, weight, bias, 1e-5, relu)
            outputs.append([y, stats, *kernel.ops.batch_norm_train_backward(upstream, x, stats, weight, relu)])
    for streamed, cached in zip(*outputs, strict=True):
        bits = torch.int16 if streamed.dtype == torch.bfloat16 else torch.int32
        assert torch.equal(streamed.contiguous().view(bits), cached.contiguous().view(bits))


NAN_WITH_PAYLOAD = -63  # bfloat16 bits 0xFFC1: a negative NaN with a payload, which torch's rounding writes as 0x7FC0


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("relu", [False, True])
def test_a_nan_in_one_channel_changes_no_bit_of_the_others_and_reads_as_torchs_nan(memory_format, relu):
    """bfloat16 outputs of a training step whose coefficients are all finite round without the NaN test
    (bn_cpu.cpp, NaNFree); a NaN in x or dy makes the step take the test. Either way every finite output is
    the same bits: a NaN put in one channel of x (then of dy) leaves the other channels' y and dx as they
    were, and makes that channel's outputs bfloat16's NaN as torch writes it (0x7FC0)."""
    kernel = fused.cpu_kernel()
    assert kernel is not None
    assert_a_nan_stays_in_its_channel(kernel, memory_format, relu)


def assert_a_nan_stays_in_its_channel(kernel, memory_format, relu) -> None:
    torch.manual_seed(0)
    shape, channel = (16, 24, 14, 14), 5
    x, upstream = ((torch.randn(shape) * 3 + 1).to(torch.bfloat16).contiguous(memory_format=memory_format)
                   for _ in range(2))
    weight, bias = torch.rand(shape[1]) + 0.5, torch.randn(shape[1])

    def step(x, upstream):
        with torch._C._AutoDispatchBelowAutograd():
            y, stats = kernel.ops.batch_norm_train(x, weight, bias, 1e-5, relu)
            return y, kernel.ops.batch_norm_train_backward(upstream, x, stats, weight, relu)[0]

    def bits(t):
        return t.contiguous().view(torch.int16)

    def poisoned(t):
        t = t.clone()
        t.view(torch.int16)[3, channel, 7, 7] = NAN_WITH_PAYLOAD
        return t

    clean_y, clean_dx = step(x, upstream)
    others = torch.arange(shape[1]) != channel
    where = f"{kernel.isa()} {memory_format} relu={relu}"
    y, dx = step(poisoned(x), upstream)
    assert torch.equal(bits(y[:, others]), bits(clean_y[:, others])), where
    assert torch.equal(bits(dx[:, others]), bits(clean_dx[:, others])), where
    assert (bits(y[:, channel]) == 0x7FC0).all() and (bits(dx[:, channel]) == 0x7FC0).all(), where
    y, dx = step(x, poisoned(upstream))
    assert torch.equal(bits(y), bits(clean_y)), where
    assert torch.equal(bits(dx[:, others]), bits(clean_dx[:, others])), where
    nan = torch.isnan(dx[:, channel].float())
    assert (nan.any() or relu) and (bits(dx[:, channel])[nan] == 0x7FC0).all(), where  # the ReLU may mask it
