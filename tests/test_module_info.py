"""PyTorch's own test samples for torch.nn.BatchNorm1d/2d (the ModuleInfo entries of
`torch.testing._internal.common_modules.module_db`), run through bnrun.nn's layers built with the
same constructor arguments, on the eager and the fused path, in training and prediction mode:
outputs, running statistics and gradients (input, γ, β) match torch.nn's module."""

from __future__ import annotations

import pytest
import torch

import bnrun.nn as bnn

OURS = {torch.nn.BatchNorm1d: bnn.BatchNorm1d, torch.nn.BatchNorm2d: bnn.BatchNorm2d}


def batch_norm_module_infos() -> list:
    """The ModuleInfo entries for BatchNorm1d/2d (torch's test helpers need `expecttest`, a test extra)."""
    from torch.testing._internal.common_modules import module_db

    return [info for info in module_db if info.module_cls in OURS]


def samples() -> list:
    """(id, module class, constructor args, constructor kwargs, input, dtype, training) for every sample.
    The inputs are drawn under a fixed seed, as torch's own TestCase seeds them: a float32 γ gradient sums
    dy·x̂ with cancellation, and unseeded draws put it past the default tolerance now and then."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _drawn_samples()


def _drawn_samples() -> list:
    found = []
    for info in batch_norm_module_infos():
        for dtype in info.dtypes:
            for training in (True, False):
                for sample in info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True,
                                                      training=training):
                    name = f"{info.name}-{sample.desc or 'default'}-{str(dtype).removeprefix('torch.')}-" \
                           f"{'train' if training else 'eval'}"
                    found.append(pytest.param(info.module_cls, sample.constructor_input.args,
                                              sample.constructor_input.kwargs, sample.forward_input.args[0],
                                              dtype, training, id=name))
    return found


SAMPLES = samples()


def test_every_sample_is_collected():
    """60 samples (BatchNorm1d: 8, BatchNorm2d: 7; float32 and float64; training and prediction mode)."""
    assert len(SAMPLES) == 60


def with_nontrivial_state(reference: torch.nn.Module) -> None:
    """γ, β and the running statistics away from their initial 1, 0, 0, 1, so that each is exercised."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in (("weight", reference.weight), ("bias", reference.bias),
                             ("running_mean", reference.running_mean), ("running_var", reference.running_var)):
            if tensor is None:
                continue
            values = torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype)
            tensor.copy_(values + 0.5 if name in ("weight", "running_var") else values * 2 - 1)


def forward_backward(layer: torch.nn.Module, x: torch.Tensor, upstream: torch.Tensor | None):
    """Output, input and parameter gradients (zeros where autograd reports no dependence on an empty
    batch), and the buffers after the step."""
    xi = x.detach().clone().requires_grad_(True)
    y = layer(xi)
    if upstream is None:
        upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    params = [p for p in (layer.weight, layer.bias) if p is not None]
    assert y.requires_grad, "the output must carry an autograd graph"
    grads = torch.autograd.grad(y, [xi, *params], upstream, allow_unused=True)
    if x.numel() > 0:
        assert all(g is not None for g in grads), "a gradient was cut"
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, [xi, *params])]
    return y.detach(), grads, [b.clone() for b in layer.buffers()], upstream


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
@pytest.mark.parametrize("module_cls,args,kwargs,x,dtype,training", SAMPLES)
def test_sample_matches_torch(module_cls, args, kwargs, x, dtype, training, fused):
    reference = module_cls(*args, **kwargs).to(dtype)
    with_nontrivial_state(reference)
    ours = OURS[module_cls](*args, **kwargs, fused=fused).to(dtype)
    ours.load_state_dict(reference.state_dict())
    reference.train(training), ours.train(training)
    for _ in range(2):  # two steps: the running statistics (momentum or cumulative average) move twice
        y_ref, grads_ref, buffers_ref, upstream = forward_backward(reference, x, None)
        y, grads, buffers, _ = forward_backward(ours, x, upstream)
        torch.testing.assert_close(y, y_ref)
        for got, want in zip(grads, grads_ref, strict=True):
            torch.testing.assert_close(got, want)
        for got, want in zip(buffers, buffers_ref, strict=True):
            torch.testing.assert_close(got, want)
