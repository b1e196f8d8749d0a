"""bnrun.nn against torch.nn: outputs, running statistics and gradients must match."""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest
import torch

import bnrun.nn as bnn
from bnrun.nn.functional import BatchNormFunction, batch_norm_eval

SHAPES = [(16, 6), (8, 5, 7), (4, 3, 6, 5)]
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}


def pair(shape, **kwargs):
    ours_cls, ref_cls = (bnn.BatchNorm2d, torch.nn.BatchNorm2d) if len(shape) == 4 else (bnn.BatchNorm1d, torch.nn.BatchNorm1d)
    dtype = kwargs.pop("dtype")
    ours, ref = ours_cls(shape[1], **kwargs).to(dtype), ref_cls(shape[1], **kwargs).to(dtype)
    if ours.affine:  # non-trivial γ, β so the affine part is really checked
        with torch.no_grad():
            for layer in (ours, ref):
                layer.weight.copy_(torch.linspace(0.5, 2.0, shape[1], dtype=dtype))
                layer.bias.copy_(torch.linspace(-1.0, 1.0, shape[1], dtype=dtype))
    return ours, ref


def step(layer, x, upstream):
    x = x.clone().requires_grad_(True)
    y = layer(x)
    (y * upstream).sum().backward()
    grads = [x.grad] + ([layer.weight.grad, layer.bias.grad] if layer.affine else [])
    return y.detach(), grads


CASES = list(itertools.product(SHAPES, [0.1, 0.5, None], [True, False], [True, False], [1e-5, 1e-3], [torch.float32, torch.float64]))


def assert_same_step(ours, ref, shape, dtype, scale=1.0, shift=0.0) -> None:
    """One forward/backward through both layers on the same data: outputs and gradients match."""
    x = torch.randn(shape, dtype=dtype) * scale + shift
    upstream = torch.randn(shape, dtype=dtype)
    (y_ours, g_ours), (y_ref, g_ref) = step(ours, x, upstream), step(ref, x, upstream)
    torch.testing.assert_close(y_ours, y_ref, **TOL[dtype])
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, **TOL[dtype])
    ours.zero_grad(), ref.zero_grad()


@pytest.mark.parametrize("shape,momentum,affine,track,eps,dtype", CASES)
def test_matches_torch(shape, momentum, affine, track, eps, dtype):
    torch.manual_seed(0)
    ours, ref = pair(shape, momentum=momentum, affine=affine, track_running_stats=track, eps=eps, dtype=dtype)
    for _ in range(4):  # several training steps: running statistics accumulate
        assert_same_step(ours, ref, shape, dtype, scale=3.0, shift=1.5)
    if track:
        torch.testing.assert_close(ours.running_mean, ref.running_mean, **TOL[dtype])
        torch.testing.assert_close(ours.running_var, ref.running_var, **TOL[dtype])
        assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == 4
    ours.eval(), ref.eval()
    assert_same_step(ours, ref, shape, dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_train_function(shape, affine):
    torch.manual_seed(1)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(shape[1], dtype=torch.float64, requires_grad=True) + 0.5 if affine else None
    bias = torch.randn(shape[1], dtype=torch.float64, requires_grad=True) if affine else None
    fn = lambda *args: BatchNormFunction.apply(args[0], *(args[1:] if affine else (None, None)), 1e-5)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, weight, bias) if affine else (x,))


@pytest.mark.parametrize("shape", SHAPES)
def test_gradcheck_eval_path(shape):
    torch.manual_seed(2)
    c = shape[1]
    inputs = (
        torch.randn(shape, dtype=torch.float64, requires_grad=True),
        torch.randn(c, dtype=torch.float64),
        torch.rand(c, dtype=torch.float64) + 0.5,
        torch.rand(c, dtype=torch.float64, requires_grad=True) + 0.5,
        torch.randn(c, dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(lambda x, m, v, w, b: batch_norm_eval(x, m, v, w, b, 1e-5), inputs)


@pytest.mark.parametrize("ours_cls,ref_cls,shape", [(bnn.BatchNorm1d, torch.nn.BatchNorm1d, (32, 5)), (bnn.BatchNorm2d, torch.nn.BatchNorm2d, (8, 5, 4, 4))])
def test_state_dict_round_trip(ours_cls, ref_cls, shape):
    torch.manual_seed(3)
    ours, ref = ours_cls(5), ref_cls(5)
    for _ in range(3):
        ours(torch.randn(shape) * 2 + 1)
        ref(torch.randn(shape) * 2 - 1)
    with torch.no_grad():
        ours.weight.mul_(1.7), ref.bias.add_(0.3)
    into_ref, into_ours = ref_cls(5), ours_cls(5)
    into_ref.load_state_dict(ours.state_dict())
    into_ours.load_state_dict(ref.state_dict())
    assert set(ours.state_dict()) == set(ref.state_dict())
    x = torch.randn(shape)
    for a, b in ((ours, into_ref), (into_ours, ref)):
        a.eval(), b.eval()
        torch.testing.assert_close(a(x), b(x))


def test_track_running_stats_false_uses_batch_stats_in_eval():
    layer = bnn.BatchNorm1d(4, track_running_stats=False).eval()
    x = torch.randn(10, 4) * 5 + 3
    y = layer(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    assert layer.running_mean is None and "running_mean" not in layer.state_dict()


@pytest.mark.parametrize("layer,x,message", [
    (bnn.BatchNorm1d(3), torch.randn(2, 3, 4, 4), "expected 2D (N, C) or 3D (N, C, L) input, got a 4D"),
    (bnn.BatchNorm2d(3), torch.randn(2, 3), "expected 4D (N, C, H, W) input, got a 2D"),
    (bnn.BatchNorm2d(3), torch.randn(2, 5, 4, 4), "expected 3 channels, got 5"),
    (bnn.BatchNorm1d(3), torch.randn(1, 3), "expected more than 1 value per channel when training"),
])
def test_bad_input_names_expected_and_got(layer, x, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        layer(x)


def test_single_value_allowed_in_eval():
    layer = bnn.BatchNorm1d(3).eval()
    assert layer(torch.randn(1, 3)).shape == (1, 3)


FORBIDDEN = {"batch_norm", "native_batch_norm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm",
             "_batch_norm_impl_index", "cudnn_batch_norm", "miopen_batch_norm", "_native_batch_norm_legit",
             "batch_norm_stats", "batch_norm_elemt", "LazyBatchNorm1d", "LazyBatchNorm2d"}


def torch_aliases(tree: ast.Module) -> set[str]:
    """Names under which torch (or torch.nn / torch.nn.functional) is reachable in a module."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("torch")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch"):
            names |= {a.asname or a.name for a in node.names}
    return names


def forbidden_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    aliases = torch_aliases(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in FORBIDDEN:
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch"):
            found += [f"{path.name}:{node.lineno} import {a.name}" for a in node.names if a.name in FORBIDDEN]
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN and node.id in aliases:
            found.append(f"{path.name}:{node.lineno} {node.id}")
    return found


def test_bnrun_nn_never_calls_torch_batch_norm():
    sources = sorted((Path(bnn.__file__).parent).glob("*.py"))
    assert sources
    offenders = [use for path in sources for use in forbidden_uses(path)]
    assert offenders == []


def test_ast_check_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch.nn.functional as F\nfrom torch.nn import BatchNorm2d\ny = F.batch_norm(x, m, v)\nz = torch.native_batch_norm\n")
    assert len(forbidden_uses(bad)) == 3


def forbidden_cpp_uses(path: Path) -> list[str]:
    """ATen/libtorch batch-norm entry points named in C++ source (at::, torch::, torch::nn::, ...)."""
    pattern = re.compile(r"\b(" + "|".join(sorted(FORBIDDEN, key=len, reverse=True)) + r")\b")
    return [f"{path.name}:{n} {m.group(1)}" for n, line in enumerate(path.read_text().splitlines(), 1)
            for m in pattern.finditer(line)]


def test_bnrun_nn_cpp_kernel_never_calls_torch_batch_norm():
    sources = sorted((Path(bnn.__file__).parent / "csrc").glob("*.cpp"))
    assert sources
    assert [use for path in sources for use in forbidden_cpp_uses(path)] == []


def test_cpp_check_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.cpp"
    bad.write_text("auto y = at::batch_norm(x, w, b, rm, rv, true, 0.1, 1e-5, false);\nauto t = at::native_batch_norm(x);\n")
    assert len(forbidden_cpp_uses(bad)) == 2
