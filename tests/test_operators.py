"""The fused kernel as PyTorch operators (`torch.ops.bnrun.*`): `torch.library.opcheck` on every
operator (schema and its mutations, fake implementation, autograd registration, AOT dispatch with
dynamic shapes); torchvision's resnet18 with bnrun's fused BN against torch's BN, eagerly, compiled
whole (fullgraph=True) and exported; `convert_batchnorm`."""

from __future__ import annotations

import itertools
import warnings
from functools import partial

import pytest
import torch
import torchvision

import bnrun.nn as bnn
from bnrun.nn import fused, operators

OPS = torch.ops.bnrun
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
CASES = list(itertools.product(DTYPES, LAYOUTS, (False, True)))
CASE_IDS = [f"{d}-{layout}-{'relu' if relu else 'norelu'}" for d, layout, relu in CASES]


@pytest.fixture(scope="module", autouse=True)
def kernel():
    loaded = fused.cpu_kernel()
    assert loaded is not None, "the C++ kernel must build here (CI has g++ and ninja)"
    return loaded


def activations(dtype, layout, shape=(4, 3, 2, 3), requires_grad=False):
    x = (torch.randn(shape) * 2 + 1).to(DTYPES[dtype]).contiguous(memory_format=LAYOUTS[layout])
    return x.requires_grad_(requires_grad)


def per_channel(channels=3, requires_grad=False, low=0.5):
    return (torch.rand(channels) + low).requires_grad_(requires_grad)


@pytest.mark.parametrize("dtype,layout,relu", CASES, ids=CASE_IDS)
def test_opcheck_training_operators(dtype, layout, relu):
    """batch_norm_train with and without γ/β, its backward, and update_running_stats with the
    batch counter and without (momentum=None counts the batch itself), on running statistics."""
    torch.manual_seed(0)
    x = activations(dtype, layout, requires_grad=True)
    weight, bias = per_channel(requires_grad=True), per_channel(requires_grad=True, low=-0.5)
    torch.library.opcheck(OPS.batch_norm_train.default, (x, weight, bias, 1e-5, relu))
    torch.library.opcheck(OPS.batch_norm_train.default, (x, None, None, 1e-3, relu))
    y, stats = OPS.batch_norm_train.default(x.detach(), weight.detach(), bias.detach(), 1e-5, relu)
    grad = torch.randn_like(y)
    torch.library.opcheck(OPS.batch_norm_train_backward.default, (grad, x.detach(), stats, weight.detach(), relu))
    count = x.numel() // x.shape[1]
    for counter in (torch.tensor(3), None):
        running = (torch.zeros(3), torch.ones(3))
        torch.library.opcheck(OPS.update_running_stats.default, (stats, *running, counter, count, 0.1))


@pytest.mark.parametrize("dtype,layout,relu", CASES, ids=CASE_IDS)
def test_opcheck_prediction_operators(dtype, layout, relu):
    torch.manual_seed(0)
    x = activations(dtype, layout, requires_grad=True)
    mean, var = (torch.randn(3) * 0.1).requires_grad_(True), per_channel(requires_grad=True)
    weight, bias = per_channel(requires_grad=True), per_channel(requires_grad=True, low=-0.5)
    torch.library.opcheck(OPS.batch_norm_eval.default, (x, mean, var, weight, bias, 1e-5, relu))
    torch.library.opcheck(OPS.batch_norm_eval.default, (x, mean.detach(), var.detach(), None, None, 1e-5, relu))
    y, coefficients = OPS.batch_norm_eval.default(x.detach(), mean.detach(), var.detach(), weight.detach(),
                                                  bias.detach(), 1e-5, relu)
    grad = torch.randn_like(y)
    torch.library.opcheck(OPS.batch_norm_eval_backward.default, (grad, x.detach(), coefficients, relu))
    torch.library.opcheck(OPS.batch_norm_eval_backward_statistics.default,
                          (grad, x.detach(), mean.detach(), weight.detach(), coefficients, relu))
    torch.library.opcheck(OPS.moments.default, (x.detach(),))


def test_opcheck_rank_2_and_3_float64():
    torch.manual_seed(0)
    for shape in ((6, 3), (4, 3, 5)):
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        weight = torch.rand(3, dtype=torch.float64, requires_grad=True)
        torch.library.opcheck(OPS.batch_norm_train.default, (x, weight, None, 1e-5, False))
        torch.library.opcheck(OPS.moments.default, (x.detach(),))


def test_the_step_mutates_only_what_its_schema_declares():
    schema = str(OPS.update_running_stats.default._schema)
    for name in ("Tensor(a!) running_mean", "Tensor(b!) running_var", "Tensor(c!)? num_batches_tracked"):
        assert name in schema
    for op in (OPS.batch_norm_train, OPS.batch_norm_eval, OPS.moments):
        assert not op.default._schema.is_mutable


def test_unsupported_input_is_refused_by_the_operator_and_routed_eager_by_bnrun():
    x = torch.randn(8, 3, dtype=torch.float64)
    why = "torch.float32 parameters or buffers with torch.float64 input"
    with pytest.raises(RuntimeError, match=why):
        OPS.batch_norm_train.default(x, torch.ones(3), None, 1e-5, False)
    assert operators.unsupported(x, torch.ones(3)) == why
    assert fused.cpu_kernel().train(x, torch.ones(3), None, None, None, 0.1, 1e-5) == (None, why)  # the eager binding
    assert operators.unsupported(x, torch.ones(3, dtype=torch.float64)) == ""


# torchvision's resnet18 with torch's BN and with bnrun's fused BN, the same state.

def resnet_pair(relu_free=True):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10)
    ours = torchvision.models.resnet18(num_classes=10, norm_layer=partial(bnn.BatchNorm2d, fused=True))
    with torch.no_grad():
        for layer in reference.modules():
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                layer.weight.uniform_(0.5, 1.5), layer.bias.uniform_(-0.5, 0.5)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def images(n=4):
    return torch.randn(n, 3, 32, 32).contiguous(memory_format=torch.channels_last)


def step(model, x):
    """Output, input gradient, parameter gradients and buffers after one forward and backward."""
    model.zero_grad()
    xi = x.detach().clone().requires_grad_(True)
    y = model(xi)
    y.square().sum().backward()
    return [y.detach(), xi.grad, *[p.grad for p in model.parameters()], *[b.clone() for b in model.buffers()]]


def assert_all_close(got, want, rtol, atol):
    """Each tensor within `atol` of the largest of its magnitude (BN's backward in training mode
    subtracts near-equal sums: the summation order's rounding reaches the first convolution's
    gradient amplified through 20 layers), and `rtol`."""
    assert len(got) == len(want)
    for index, (a, b) in enumerate(zip(got, want, strict=True)):
        scale = max(1.0, b.abs().max().item()) if b.is_floating_point() else 1.0
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale, msg=lambda m, i=index: f"output {i}: {m}")


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_resnet18_with_bnrun_bn_matches_torch_bn_eagerly(mode):
    reference, ours = resnet_pair()
    reference.train(mode == "train"), ours.train(mode == "train")
    x = images()
    assert_all_close(step(ours, x), step(reference, x), rtol=1e-3, atol=1e-3)
    assert {layer.path for layer in bnn.batchnorm_layers(ours)} == ({"fused-cpu"} if mode == "train" else {None})


@pytest.mark.compile
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_resnet18_compiles_whole_and_matches_eager(mode):
    """torch.compile(fullgraph=True): one graph, no break at the BN layers; outputs, gradients and
    running statistics as the eager model's, and as torch's BN."""
    torch._dynamo.reset()
    reference, ours = resnet_pair()
    compiled_model = bnn.convert_batchnorm(resnet_pair()[1], fused=True)
    compiled_model.load_state_dict(ours.state_dict())
    for model in (reference, ours, compiled_model):
        model.train(mode == "train")
    compiled = torch.compile(compiled_model, fullgraph=True)
    x = images()
    want = step(ours, x)
    assert_all_close(step(compiled, x), want, rtol=1e-3, atol=1e-3)
    assert_all_close(step(reference, x), want, rtol=1e-3, atol=1e-3)


@pytest.mark.compile
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_resnet18_exports_and_the_exported_program_matches(mode):
    reference, ours = resnet_pair()
    ours.train(mode == "train"), reference.train(mode == "train")
    x = images()
    exported = torch.export.export(ours, (x,))
    graph_ops = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    wanted = "bnrun.batch_norm_train.default" if mode == "train" else "bnrun.batch_norm_eval.default"
    assert wanted in graph_ops, graph_ops
    assert not any("native_batch_norm" in op or "batch_norm." in op.replace("bnrun.batch_norm", "")
                   for op in graph_ops)
    with torch.no_grad():
        want = reference(x)
        torch.testing.assert_close(exported.module()(x), want, rtol=1e-3, atol=1e-3)


# convert_batchnorm

def test_convert_batchnorm_swaps_every_layer_of_resnet18():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model(images()).sum()  # running statistics and num_batches_tracked away from their initial values
    model.eval()
    x = images()
    with torch.no_grad():
        want = model(x)
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    weight = model.bn1.weight
    converted = bnn.convert_batchnorm(model, fused=True)
    layers = bnn.batchnorm_layers(converted)
    assert len(layers) == 20 and all(isinstance(layer, bnn.BatchNorm2d) and layer.fused for layer in layers)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(m, bnn.BatchNorm2d)
                   for m in converted.modules())  # no torch.nn layer left (bnrun's derive from torch's base)
    assert converted.bn1.weight is weight  # the same parameters: an optimizer built before still holds them
    assert all(torch.equal(state[name], tensor) for name, tensor in converted.state_dict().items())
    assert not converted.training and not converted.bn1.training
    with torch.no_grad():
        torch.testing.assert_close(converted(x), want, rtol=1e-4, atol=1e-5)


def test_convert_batchnorm_keeps_every_setting_of_a_batchnorm1d_model():
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 4),
        torch.nn.BatchNorm1d(4, eps=1e-3, momentum=None),
        torch.nn.Sequential(torch.nn.Linear(4, 4, dtype=torch.float64),
                            torch.nn.BatchNorm1d(4, affine=False, track_running_stats=False, dtype=torch.float64)),
    )
    model[1].num_batches_tracked.fill_(7)
    model[2].eval()
    converted = bnn.convert_batchnorm(model)
    first, second = converted[1], converted[2][1]
    assert isinstance(first, bnn.BatchNorm1d) and isinstance(second, bnn.BatchNorm1d)
    assert (first.eps, first.momentum, first.affine, first.track_running_stats, first.fused) == (1e-3, None, True,
                                                                                                 True, False)
    assert first.num_batches_tracked.item() == 7 and first.training
    assert (second.affine, second.track_running_stats, second.training) == (False, False, False)
    assert second.weight is None and second.running_mean is None
    assert bnn.convert_batchnorm(torch.nn.BatchNorm1d(3, dtype=torch.float64)).running_var.dtype == torch.float64


def test_convert_batchnorm_leaves_sync_batchnorm_alone_with_one_warning():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.SyncBatchNorm(4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = bnn.convert_batchnorm(model)
    assert isinstance(converted[1], torch.nn.SyncBatchNorm)
    assert len(caught) == 1 and "SyncBatchNorm" in str(caught[0].message) and "\n" not in str(caught[0].message)


def test_a_dispatch_mode_sees_the_operators_and_plain_eager_calls_skip_the_dispatcher():
    """Under a TorchDispatchMode (a FLOP counter, a debug mode) the layer goes through torch.ops.bnrun, which
    the mode sees; plain eager calls take the kernel's direct binding, with the same result."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    x = torch.randn(16, 4)
    direct, watched = bnn.BatchNorm1d(4, fused=True), bnn.BatchNorm1d(4, fused=True)
    expected = direct(x)
    with Seen() as seen:
        got = watched(x)
    assert any(name.startswith("bnrun.batch_norm_train") for name in seen.names)
    assert any(name.startswith("bnrun.update_running_stats") for name in seen.names)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(watched.running_mean, direct.running_mean)
    assert watched.num_batches_tracked.item() == direct.num_batches_tracked.item() == 1
    assert watched.path == direct.path == fused.FUSED_CPU
