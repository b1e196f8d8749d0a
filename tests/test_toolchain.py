"""bnrun's layer through torch's toolchain, on both paths (eager and fused): a torch `_BatchNorm` to
torch's own utilities (swa_utils.update_bn, convert_sync_batchnorm, torch.func's
replace_all_batch_norm_modules_, fuse_conv_bn_eval), torch.fx symbolic tracing and torchvision's
feature extraction, torch.func's transforms (grad, vjp, jacrev, per-sample gradients, vmapped
ensembles), `to_torch` before torch's fusers, and the behaviours PyTorch's own BatchNorm tests
(test/test_nn.py) check on CPU, each against torch.nn's layer with the same state."""

from __future__ import annotations

import copy
import warnings
from functools import partial

import pytest
import torch
import torchvision
from torch import nn
from torch.func import functional_call, grad, jacrev, replace_all_batch_norm_modules_, stack_module_state, vjp, vmap
from torch.fx.experimental.optimization import fuse as fx_fuse
from torchvision.models.feature_extraction import create_feature_extractor

import bnrun.nn as bnn
from bnrun.nn import operators

PATHS = {"eager": False, "fused": True}
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(params=list(PATHS), ids=list(PATHS))
def fused(request):
    return PATHS[request.param]


@pytest.fixture(autouse=True)
def no_fallbacks():
    """Every test here fails on a warning: a per-example vmap fallback or a fast path falling back."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # functorch's "performance drop" fallback
        warnings.simplefilter("error", RuntimeWarning)  # bnrun's fast path falling back
        yield


def pair(fused: bool, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """conv–BN–ReLU–linear–BN–ReLU–linear with bnrun's layers, and the same with torch's, one state."""
    torch.manual_seed(seed)

    def model(bn2d, bn1d):
        return nn.Sequential(nn.Conv2d(3, 4, 3), bn2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 6), bn1d(6),
                             nn.ReLU(), nn.Linear(6, 3))

    ours = model(partial(bnn.BatchNorm2d, fused=fused), partial(bnn.BatchNorm1d, fused=fused))
    with torch.no_grad():
        for layer in bnn.batchnorm_layers(ours):
            layer.weight.uniform_(0.5, 1.5), layer.bias.uniform_(-0.5, 0.5)
            layer.running_mean.uniform_(-0.3, 0.3), layer.running_var.uniform_(0.5, 1.5)
    reference = model(nn.BatchNorm2d, nn.BatchNorm1d)
    reference.load_state_dict(ours.state_dict())
    return ours, reference


def images(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


def parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters()}


def assert_trees_close(a, b, tolerance: float = 1e-5) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=tolerance, rtol=tolerance)
    else:
        torch.testing.assert_close(a, b, atol=tolerance, rtol=tolerance)


# torch's BN utilities select layers by the `_BatchNorm` base.

def test_the_layer_is_a_torch_batchnorm(fused):
    for layer in (bnn.BatchNorm1d(3, fused=fused), bnn.BatchNorm2d(3, fused=fused)):
        assert isinstance(layer, nn.modules.batchnorm._BatchNorm)


def test_swa_update_bn_recomputes_the_running_statistics(fused):
    ours, reference = pair(fused)
    loader = [images(seed=s) for s in range(3)]
    for model in (ours, reference):
        torch.optim.swa_utils.update_bn(loader, model)
    before = pair(fused)[0]
    assert not torch.allclose(ours[1].running_mean, before[1].running_mean)
    for a, b in zip(bnn.batchnorm_layers(ours), bnn.batchnorm_layers(reference)):
        torch.testing.assert_close(a.running_mean, b.running_mean, **TOL)
        torch.testing.assert_close(a.running_var, b.running_var, **TOL)
        assert a.momentum == b.momentum == 0.1  # update_bn restores it


def test_replace_all_batch_norm_modules_removes_the_running_statistics(fused):
    ours, _ = pair(fused)
    replace_all_batch_norm_modules_(ours)
    for layer in (ours[1], ours[5]):
        assert layer.running_mean is None and layer.running_var is None and not layer.track_running_stats
    ours.eval()(images())  # batch statistics in eval mode too, as torch's layer without buffers


def test_convert_sync_batchnorm_converts_the_layers(fused):
    ours, _ = pair(fused)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(ours)
    assert [type(m).__name__ for m in converted.modules()].count("SyncBatchNorm") == 2
    assert not any(isinstance(m, (bnn.BatchNorm1d, bnn.BatchNorm2d)) for m in converted.modules())


def test_a_fused_relu_survives_convert_sync_batchnorm_through_to_torch(fused):
    """SyncBatchNorm has no ReLU: a model whose layers apply it (relu=True, with an Identity in the
    ReLU's place, as bnrun's models build them) keeps its outputs when it goes through to_torch first."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), bnn.BatchNorm2d(4, fused=fused, relu=True), nn.Identity(),
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x = images()
    expected = model(x)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(bnn.to_torch(model)).eval()
    assert [type(m).__name__ for m in converted.modules()].count("SyncBatchNorm") == 1
    torch.testing.assert_close(converted(x), expected, **TOL)


def test_fuse_conv_bn_eval_folds_the_layer(fused):
    ours, _ = pair(fused)
    ours.eval()
    fused_conv = torch.nn.utils.fusion.fuse_conv_bn_eval(ours[0], ours[1])
    torch.testing.assert_close(fused_conv(images()), ours[1](ours[0](images())), **TOL)


# torch.fx and torchvision's feature extraction.

@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fx_symbolic_trace_gives_the_untraced_outputs(fused, mode):
    ours, _ = pair(fused)
    getattr(ours, mode)()
    traced = torch.fx.symbolic_trace(copy.deepcopy(ours))
    torch.testing.assert_close(traced(images()), ours(images()), atol=0, rtol=0)
    torch.testing.assert_close(traced.get_submodule("1").running_mean, ours[1].running_mean, atol=0, rtol=0)
    traced.eval() if mode == "train" else traced.train()  # the traced graph follows the layer's mode at run time
    ours.eval() if mode == "train" else ours.train()
    torch.testing.assert_close(traced(images(seed=5)), ours(images(seed=5)), **TOL)


def test_create_feature_extractor_on_resnet18_with_bnrun_norm_layer(fused):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10, norm_layer=partial(bnn.BatchNorm2d, fused=fused)).eval()
    extractor = create_feature_extractor(model, {"layer2": "mid", "fc": "out"})
    x = torch.randn(2, 3, 32, 32)
    features = extractor(x)
    assert features["mid"].shape == (2, 128, 4, 4)
    torch.testing.assert_close(features["out"], model(x), **TOL)


# torch.func, each against torch's layer with the same state.

def loss(model: nn.Module, params: dict, x: torch.Tensor) -> torch.Tensor:
    return functional_call(model, params, (x,)).pow(2).sum()


def test_torch_func_grad_and_vjp_in_eval_mode(fused):
    ours, reference = pair(fused)
    results = []
    for model in (ours.eval(), reference.eval()):
        gradients = grad(partial(loss, model))(parameters(model), images())
        _, pullback = vjp(lambda x, m=model: m(x), images())
        results.append((gradients, pullback(torch.ones(6, 3))[0]))
    assert_trees_close(results[0][0], results[1][0])
    assert_trees_close(results[0][1], results[1][1])


def test_torch_func_jacrev_in_eval_mode(fused):
    ours, reference = pair(fused)
    jacobians = [jacrev(lambda x, m=model.eval(): m(x))(images(n=3)) for model in (ours, reference)]
    assert jacobians[0].shape == (3, 3, 3, 3, 8, 8)
    assert_trees_close(*jacobians)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_per_sample_gradients_with_vmap_of_grad(fused, mode):
    """vmap(grad): one gradient per example; in training mode (running statistics removed first) each
    example is a batch of its own, so its statistics are its own, in both implementations."""
    ours, reference = pair(fused)
    per_example = []
    for model in (ours, reference):
        getattr(model, mode)()
        if mode == "train":
            replace_all_batch_norm_modules_(model)
        step = grad(lambda p, x, m=model: loss(m, p, x.unsqueeze(0).expand(2, -1, -1, -1) * torch.tensor(
            [[[[1.0]]], [[[0.5]]]])))
        per_example.append(vmap(step, in_dims=(None, 0))(parameters(model), images()))
    assert per_example[0]["1.weight"].shape == (6, 4)
    # Training mode: statistics of 72 values per channel, summed in the kernel's order, not torch's.
    assert_trees_close(*per_example, tolerance=1e-5 if mode == "eval" else 1e-4)


def test_grad_in_train_mode_after_replace_all_batch_norm_modules(fused):
    ours, reference = pair(fused)
    gradients = []
    for model in (ours.train(), reference.train()):
        replace_all_batch_norm_modules_(model)
        gradients.append(grad(partial(loss, model))(parameters(model), images()))
    assert_trees_close(*gradients)


def ensemble_outputs(models: list[nn.Module], x: torch.Tensor):
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    outputs = vmap(lambda p, b, xx: functional_call(base, (p, b), (xx,)), in_dims=(0, 0, None))(params, buffers, x)
    return outputs, buffers


@pytest.mark.parametrize("running", [False, True], ids=["no-running-stats", "stacked-running-stats"])
def test_vmap_over_a_stack_module_state_ensemble_in_train_mode(fused, running):
    """Three seeds as one model: vmapped training-mode forward, with the running statistics removed
    (replace_all_batch_norm_modules_) or stacked with the parameters and updated per member."""
    members = [pair(fused, seed) for seed in range(3)]
    results = []
    for models in ([m[0] for m in members], [m[1] for m in members]):
        for model in models:
            model.train()
            if not running:
                replace_all_batch_norm_modules_(model)
        results.append(ensemble_outputs(models, images()))
    assert_trees_close(results[0][0], results[1][0])
    if running:
        for name in ("1.running_mean", "1.running_var", "5.running_mean", "5.running_var"):
            torch.testing.assert_close(results[0][1][name], results[1][1][name], **TOL)
        assert results[0][1]["1.num_batches_tracked"].tolist() == [1, 1, 1]


def test_vmap_in_train_mode_with_shared_running_statistics_is_refused_clearly():
    ours, _ = pair(True)
    with pytest.raises(RuntimeError, match="replace_all_batch_norm_modules_"):
        vmap(lambda x: ours.train()(x.unsqueeze(0).expand(2, -1, -1, -1)))(images())


def test_fused_second_derivative_under_torch_func_is_refused():
    ours, _ = pair(True)
    layer = ours[1].eval()
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(RuntimeError, match="double backward"):
        jacrev(jacrev(lambda t: layer(t).pow(3).sum()))(x)


def test_one_kernel_call_per_vmapped_batch(monkeypatch):
    """The vmap rules fold the vmapped dimension into the channels: one operator call, not one per example."""
    layer = bnn.BatchNorm2d(4, fused=True).train()
    replace_all_batch_norm_modules_(layer)
    calls = []
    kernel = operators.FunctorchTrain.forward
    monkeypatch.setattr(operators.FunctorchTrain, "forward", staticmethod(
        lambda *args: calls.append(args[0].shape) or kernel(*args)))
    vmap(layer)(torch.randn(5, 3, 4, 2, 2))
    assert len(calls) == 1


# Back to torch's layers for the deployment tools that select by exact type.

def test_to_torch_is_the_inverse_of_convert_batchnorm(fused):
    ours, reference = pair(fused)
    converted = bnn.to_torch(copy.deepcopy(ours)).eval()
    assert [type(m) for m in converted.modules()] == [type(m) for m in reference.modules()]
    torch.testing.assert_close(converted(images()), ours.eval()(images()), **TOL)
    back = bnn.convert_batchnorm(copy.deepcopy(converted), fused=fused)
    torch.testing.assert_close(back(images()), ours(images()), **TOL)


def test_to_torch_keeps_a_fused_relu_as_a_module():
    layer = bnn.BatchNorm1d(3, fused=True, relu=True).eval()
    converted = bnn.to_torch(layer)
    assert isinstance(converted, nn.Sequential) and isinstance(converted[1], nn.ReLU)
    x = torch.randn(4, 3)
    torch.testing.assert_close(converted(x), layer(x), **TOL)


def test_to_torch_then_fx_fuse_and_quantization_fusers(fused):
    ours, _ = pair(fused)
    ours.eval()
    want = ours(images())
    deployable = bnn.to_torch(copy.deepcopy(ours)).eval()
    fx_fused = fx_fuse(deployable)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fx_fused.modules())
    torch.testing.assert_close(fx_fused(images()), want, **TOL)
    pairs = [["0", "1", "2"], ["4", "5"]]  # conv–BN–ReLU and linear–BN (torch fuses no linear–BN–ReLU)
    q_fused = torch.ao.quantization.fuse_modules(copy.deepcopy(deployable), pairs)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in q_fused.modules())
    torch.testing.assert_close(q_fused(images()), want, **TOL)
    qat = torch.ao.quantization.fuse_modules_qat(copy.deepcopy(deployable).train(), pairs)
    assert [type(m).__name__ for m in qat.children()][:5] == ["ConvBnReLU2d", "Identity", "Identity", "Flatten",
                                                               "LinearBn1d"]


# PyTorch's own BatchNorm tests (test/test_nn.py), the CPU behaviours, written here.

def layers(fused: bool, channels: int = 3, **kwargs) -> list[tuple[nn.Module, nn.Module]]:
    made = []
    for ours_class, theirs_class in ((bnn.BatchNorm1d, nn.BatchNorm1d), (bnn.BatchNorm2d, nn.BatchNorm2d)):
        ours = ours_class(channels, fused=fused, **kwargs)
        theirs = theirs_class(channels, **kwargs)
        theirs.load_state_dict(ours.state_dict())
        made.append((ours, theirs))
    return made


@pytest.mark.parametrize("layer,shape", [(bnn.BatchNorm1d, (2, 3, 4, 5)), (bnn.BatchNorm1d, (3,)),
                                         (bnn.BatchNorm2d, (2, 3, 4)), (bnn.BatchNorm2d, (2, 3, 4, 5, 6))])
def test_input_dimension_errors(fused, layer, shape):
    with pytest.raises(ValueError, match="expected"):
        layer(3, fused=fused)(torch.randn(shape))


def test_channel_count_error(fused):
    with pytest.raises(ValueError, match="expected 3 channels, got 4"):
        bnn.BatchNorm2d(3, fused=fused)(torch.randn(2, 4, 3, 3))


def test_fewer_than_one_value_per_channel_in_training(fused):
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bnn.BatchNorm1d(3, fused=fused)(torch.randn(1, 3))
    bnn.BatchNorm1d(3, fused=fused).eval()(torch.randn(1, 3))  # fine in eval mode, as torch's


def test_buffers_when_statistics_are_not_tracked(fused):
    for ours, theirs in layers(fused, track_running_stats=False):
        assert ours.running_mean is None and ours.running_var is None and ours.num_batches_tracked is None
        assert ours.state_dict().keys() == theirs.state_dict().keys()


def test_momentum_none_is_a_cumulative_average(fused):
    for ours, theirs in layers(fused, momentum=None):
        batches = [torch.randn(8, 3, 2, 2) if isinstance(ours, bnn.BatchNorm2d) else torch.randn(8, 3)
                   for _ in range(4)]
        for x in batches:
            ours(x), theirs(x)
        means = torch.stack([x.mean([d for d in range(x.dim()) if d != 1]) for x in batches])
        torch.testing.assert_close(ours.running_mean, means.mean(0), **TOL)
        torch.testing.assert_close(ours.running_var, theirs.running_var, **TOL)
        assert ours.num_batches_tracked.item() == 4


def test_eval_after_train(fused):
    for ours, theirs in layers(fused):
        shape = (6, 3, 2, 2) if isinstance(ours, bnn.BatchNorm2d) else (6, 3)
        x = torch.randn(shape) * 3 + 1
        ours(x), theirs(x)
        ours.eval(), theirs.eval()
        torch.testing.assert_close(ours(x), theirs(x), **TOL)


def test_affine_false(fused):
    for ours, theirs in layers(fused, affine=False):
        assert ours.weight is None and ours.bias is None
        x = torch.randn(5, 3, 4, 4) if isinstance(ours, bnn.BatchNorm2d) else torch.randn(5, 3)
        torch.testing.assert_close(ours(x), theirs(x), **TOL)


@pytest.mark.parametrize("layout", ["transposed", "channels_last"])
def test_non_contiguous_and_channels_last_input(fused, layout):
    ours, theirs = layers(fused)[1]
    x = torch.randn(4, 3, 5, 6)
    x = x.transpose(2, 3) if layout == "transposed" else x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y_ours, y_theirs = ours(x), theirs(x)
    torch.testing.assert_close(y_ours, y_theirs, **TOL)
    upstream = torch.randn_like(y_theirs)
    assert_trees_close(torch.autograd.grad(y_ours, x, upstream), torch.autograd.grad(y_theirs, x, upstream))


def test_half_precision_does_not_overflow(fused):
    """Values whose squares and sums overflow float16 (max 65504): the statistics run in float32."""
    layer = bnn.BatchNorm2d(3, fused=fused)
    x = (torch.randn(8, 3, 4, 4) * 2e4).clamp(-6e4, 6e4).half()
    y = layer(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), nn.BatchNorm2d(3)(x.float()), atol=1e-2, rtol=1e-2)


def test_load_state_dict_of_an_old_version_without_num_batches_tracked(fused):
    ours = bnn.BatchNorm2d(3, fused=fused)
    state = ours.state_dict()
    del state["num_batches_tracked"]
    state._metadata = {"": {"version": 1}}
    ours.load_state_dict(state)
    assert ours.num_batches_tracked.item() == 0


def test_an_empty_batch_gives_zero_gradients_and_leaves_the_statistics(fused):
    for ours, theirs in layers(fused):
        shape = (0, 3, 2, 2) if isinstance(ours, bnn.BatchNorm2d) else (0, 3)
        for layer in (ours, theirs):
            y = layer(torch.randn(shape, requires_grad=True))
            assert y.shape == shape
            y.sum().backward()
        for name in ("weight", "bias"):
            torch.testing.assert_close(getattr(ours, name).grad, torch.zeros(3))
            torch.testing.assert_close(getattr(ours, name).grad, getattr(theirs, name).grad)
        torch.testing.assert_close(ours.running_mean, torch.zeros(3))
        torch.testing.assert_close(ours.running_var, torch.ones(3))
