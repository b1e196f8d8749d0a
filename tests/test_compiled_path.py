"""The compiled batch-norm path (torch.compile of the eager step: CUDA's fast path) on CPU tensors,
where torch.compile runs too (Inductor's C++ backend): every shape a default trial, its
diagnostics and `eval --batch-stats` give the BN layers, forward and backward, against the eager
path, without a fallback and without reaching the recompile limit; and its wrapper: no tensor built
from host data per step, an out-of-memory error re-raised, a failing compiled backward caught by
the warm-up before a trial's first epoch."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from bnrun.config import TrainConfig
from bnrun.nn import batchnorm_layers, fused
from bnrun.training.models import model_of


@pytest.fixture
def compiled_on_cpu(monkeypatch):
    """CPU tensors take the path CUDA tensors take (instead of the C++ kernel, whose direct call the
    layer tries first)."""
    monkeypatch.setattr(fused, "cpu_train_step", lambda *args: None)
    monkeypatch.setattr(fused, "train_step", fused.compiled_train_step)


@pytest.fixture
def fake_compiled(monkeypatch):
    """The process's compiled steps replaced by recorders that run the eager step."""
    calls = []

    def recorder(eager):
        def call(*args):
            calls.append(args)
            return eager(*args)
        return call

    for relu in (False, True):
        kernel = fused.compiled_kernel(relu)
        monkeypatch.setattr(kernel, "compiled", recorder(kernel.eager))
    return calls


def bn_input_shapes(model, x) -> list[tuple]:
    shapes = []
    hooks = [layer.register_forward_pre_hook(lambda m, inputs: shapes.append(tuple(inputs[0].shape)))
             for layer in batchnorm_layers(model)]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return shapes


def test_the_compiled_step_builds_no_tensor_from_host_data(fake_compiled, monkeypatch):
    def no_host_tensor(*args, **kwargs):
        raise AssertionError("torch.tensor in a training step: a blocking copy to the device")

    monkeypatch.setattr(torch, "tensor", no_host_tensor)
    layer_args = (torch.ones(4), torch.zeros(4), torch.zeros(4), torch.ones(4))
    for _ in range(3):
        fused.compiled_train_step(torch.randn(8, 4), *layer_args, 0.1, 1e-5)
    factors = [args[5] for args in fake_compiled]
    assert all(f is factors[0] for f in factors)  # one factor tensor, made once, reused by every step


def test_out_of_memory_is_raised_not_taken_for_unavailable(monkeypatch):
    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    kernel = fused.compiled_kernel(False)
    monkeypatch.setattr(kernel, "compiled", out_of_memory)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "fused batch norm unavailable" warning
        with pytest.raises(torch.OutOfMemoryError):
            fused.compiled_train_step(torch.randn(8, 4), None, None, None, None, 0.1, 1e-5)
    assert kernel.compiled is out_of_memory  # still the compiled path: memory is not a missing backend


class FailsInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 1

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("inductor: backward graph failed to compile")


def test_a_backward_failure_is_caught_by_the_warm_up_and_the_trial_runs_eager(monkeypatch, compiled_on_cpu):
    for relu in (False, True):
        kernel = fused.compiled_kernel(relu)
        monkeypatch.setattr(kernel, "compiled", lambda x, *rest, _eager=kernel.eager: _eager(FailsInBackward.apply(x),
                                                                                            *rest))
    model = model_of(TrainConfig(arch="mlp", fused=True))
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(16, 1, 28, 28)
    rng = torch.get_rng_state()
    with pytest.warns(RuntimeWarning, match="backward graph failed to compile"):
        fused.warm_up(model, x)
    assert torch.equal(torch.get_rng_state(), rng)  # the trial's random stream is untouched
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert fused.compiled_kernel(True).compiled is None and fused.compiled_kernel(False).compiled is None
    F.cross_entropy(model(torch.randn(16, 1, 28, 28)), torch.zeros(16, dtype=torch.long)).backward()
    assert {layer.path for layer in batchnorm_layers(model)} == {fused.EAGER}


@pytest.fixture
def fresh_compiled_kernels():
    """Compiled kernels that start from nothing (another test may have turned them off)."""
    fused.compiled_kernel.cache_clear()
    torch._dynamo.reset()
    counters.clear()
    yield
    fused.compiled_kernel.cache_clear()
    torch._dynamo.reset()


# The batch sizes a default trial's BN layers see: training (128, and the last partial batch of
# 55,000 images), the diagnostics' probe batches (128) and batch-statistics validation (5,000 =
# 39 × 128 + 8), and `eval --batch-stats` at the sizes its help suggests, down to 2.
TRAIN_SIZES = (128, 88)
NO_GRAD_SIZES = (128, 8, 2, 16, 1000)


@pytest.mark.slow
@pytest.mark.compile
@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_every_shape_of_a_trial_compiles_once_and_matches_eager(arch, compiled_on_cpu, fresh_compiled_kernels):
    config = TrainConfig(arch=arch, fused=True, channels_last=arch == "cnn")
    torch.manual_seed(0)
    model = model_of(config)
    reference = copy.deepcopy(model)
    for layer in batchnorm_layers(reference):
        layer.fused = False
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # any fallback fails the test
        fused.warm_up(model, torch.randn(TRAIN_SIZES[0], 1, 28, 28))
        for n in TRAIN_SIZES:
            x = torch.randn(n, 1, 28, 28)
            y = torch.randint(0, 10, (n,))
            for m in (model, reference):
                m.zero_grad()
                F.cross_entropy(m(x), y).backward()
            assert {layer.path for layer in batchnorm_layers(model)} == {fused.COMPILED}
            for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
                # summation order differs (Inductor's reductions): rounding, amplified in the first
                # convolution's gradient by BN's backward (a difference of near-equal sums)
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-4,
                                           msg=lambda m, name=name, n=n: f"{name} at batch {n}: {m}")
        with torch.no_grad():
            for n in NO_GRAD_SIZES:
                x = torch.randn(n, 1, 28, 28)
                torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)
    for (name, a), (_, b) in zip(model.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    graphs = counters["stats"]["unique_graphs"]
    layers = len(set(bn_input_shapes(model, torch.randn(2, 1, 28, 28))))
    # per layer shape and grad mode, not per batch size (7 sizes ran), under the recompile limit,
    # past which torch would raise (fail_on_recompile_limit_hit) and bnrun fall back loudly
    assert graphs <= 2 * layers + 2 and graphs < fused.RECOMPILE_LIMIT == torch._dynamo.config.recompile_limit, graphs
