"""The fused CPU kernel's operators (`torch.ops.bnrun.*`, registered by `csrc/bn_ops.cpp`): their
fake implementations, so that torch.compile and torch.export trace them without touching data,
and the calls bnrun makes of them.

The operators, per schema (each build registers them in its own namespace, `OPS_NAMESPACE` for
this machine's build):
  batch_norm_train(input, weight?, bias?, eps, relu) -> (y, stats)      differentiable in input,
      weight, bias; stats: the (5, C) rows mean, biased var, 1/σ̂, a, k
  batch_norm_train_backward(grad_output, input, stats, weight?, relu) -> (dx, dγ, dβ)
  update_running_stats(stats, running_mean!, running_var!, num_batches_tracked!?, count, factor)
  batch_norm_eval(input, mean, var, weight?, bias?, eps, relu) -> (y, coefficients)
      differentiable in input, mean, var, weight, bias; coefficients: the (3, C) rows 1/σ̂, a, k
  batch_norm_eval_backward(grad_output, input, coefficients, relu) -> dx
  batch_norm_eval_backward_statistics(grad_output, input, mean, weight?, coefficients, relu)
      -> (dμ, dσ², dγ, dβ)
  moments(input) -> (mean, Σ(x − μ)²), float64
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
from torch import Tensor

OPS_NAMESPACE = "bnrun"
# The op-math type of each input dtype the kernel serves: its per-channel tensors' dtype.
OPMATH = {torch.float32: torch.float32, torch.float64: torch.float64, torch.bfloat16: torch.float32,
          torch.float16: torch.float32}
STAT_ROWS, COEFFICIENT_ROWS = 5, 3


def unsupported(x: Tensor, *per_channel: Tensor | None) -> str:
    """Why the kernel cannot serve `x` (a CPU tensor) with these per-channel tensors, or "" when
    it can (the operators' own input checks, asked before calling them)."""
    wanted = OPMATH.get(x.dtype)
    if wanted is None:
        return f"input dtype {x.dtype}"
    if x.dim() < 2 or x.numel() == 0:
        return "empty input"
    for t in per_channel:
        if t is None:
            continue
        if t.dtype != wanted:
            return f"{t.dtype} parameters or buffers with {x.dtype} input"
        if not (t.is_cpu and t.is_contiguous()) or t.numel() != x.shape[1]:
            return "non-contiguous or non-CPU parameters or buffers, or not one value per channel"
    return ""


def train(ops, x: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
          running_var: Tensor | None, factor: float, eps: float, relu: bool = False,
          counter: Tensor | None = None) -> Tensor:
    """The training step through the operators of namespace `ops` (input `unsupported` accepts):
    y, and the running statistics (when given) moved by `factor`, `counter` incremented."""
    if torch._C._are_functorch_transforms_active():
        y, stats = FunctorchTrain.apply(x, weight, bias, eps, relu, ops)
    else:
        y, stats = ops.batch_norm_train.default(x, weight, bias, eps, relu)
    if running_mean is not None:
        count = x.numel() // x.shape[1]
        ops.update_running_stats.default(stats, running_mean, running_var, counter, count, factor)
    return y


def predict(ops, x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
            relu: bool = False) -> Tensor:
    """Prediction mode through the operators of namespace `ops`."""
    if torch._C._are_functorch_transforms_active():
        return FunctorchPredict.apply(x, mean, var, weight, bias, eps, relu, ops)[0]
    return ops.batch_norm_eval.default(x, mean, var, weight, bias, eps, relu)[0]


def moments(ops, x: Tensor) -> tuple[int, Tensor, Tensor]:
    """(count, mean, Σ(x − μ)²) per channel in float64 through the operators of namespace `ops`."""
    mean, squares = ops.moments.default(x)
    return x.numel() // x.shape[1], mean, squares


def _dense_format(x: Tensor) -> torch.memory_format:
    """The layout the kernels write: channels_last for channels_last 4D input, else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _like_input(x: Tensor) -> Tensor:
    return torch.empty_like(x, memory_format=_dense_format(x))


def _per_channel(x: Tensor, rows: int | None = None, dtype: torch.dtype | None = None) -> Tensor:
    shape = (x.shape[1],) if rows is None else (rows, x.shape[1])
    return x.new_empty(shape, dtype=dtype or OPMATH[x.dtype])


def _fake_train(x, weight, bias, eps, relu):
    return _like_input(x), _per_channel(x, STAT_ROWS)


def _fake_train_backward(grad_output, x, stats, weight, relu):
    return _like_input(x), _per_channel(x), _per_channel(x)


def _fake_update_running_stats(stats, running_mean, running_var, num_batches_tracked, count, factor):
    return None


def _fake_eval(x, mean, var, weight, bias, eps, relu):
    return _like_input(x), _per_channel(x, COEFFICIENT_ROWS, mean.dtype)


def _fake_eval_backward(grad_output, x, coefficients, relu):
    return _like_input(x)


def _fake_eval_backward_statistics(grad_output, x, mean, weight, coefficients, relu):
    return tuple(torch.empty_like(mean) for _ in range(4))


def _fake_moments(x):
    return _per_channel(x, dtype=torch.float64), _per_channel(x, dtype=torch.float64)


FAKES = {
    "batch_norm_train": _fake_train,
    "batch_norm_train_backward": _fake_train_backward,
    "update_running_stats": _fake_update_running_stats,
    "batch_norm_eval": _fake_eval,
    "batch_norm_eval_backward": _fake_eval_backward,
    "batch_norm_eval_backward_statistics": _fake_eval_backward_statistics,
    "moments": _fake_moments,
}


NO_DOUBLE_BACKWARD = ("bnrun's fused batch norm does not support double backward (create_graph=True, or a "
                      "second-order torch.func transform); use fused=False")


@functools.cache
def register_python_side(namespace: str) -> None:
    """Registers, once per loaded build's namespace, what the operators get from Python: the fake
    implementations (tracing), the autograd formulas (torch.library.register_autograd, which
    torch.func's transforms accept, unlike a C++ autograd::Function) and the vmap rules."""
    for name, fake in FAKES.items():
        torch.library.register_fake(f"{namespace}::{name}", fake)
    ops = getattr(torch.ops, namespace)
    torch.library.register_autograd(f"{namespace}::batch_norm_train", _train_backward(ops),
                                    setup_context=_train_setup)
    torch.library.register_autograd(f"{namespace}::batch_norm_eval", _eval_backward(ops), setup_context=_eval_setup)
    for name in ("batch_norm_train_backward", "batch_norm_eval_backward", "batch_norm_eval_backward_statistics"):
        torch.library.register_autograd(f"{namespace}::{name}", _refuse_double_backward)
    for name, rule in vmap_rules(ops).items():
        torch.library.register_vmap(f"{namespace}::{name}", rule)


# Autograd formulas: the hand-derived backward is the backward operators (bn_cpu.cpp).

def _train_setup(ctx, inputs, output) -> None:
    x, weight, bias, _eps, relu = inputs
    ctx.save_for_backward(x, output[1], weight)
    ctx.relu, ctx.has_bias = relu, bias is not None
    ctx.mark_non_differentiable(output[1])


def _train_backward(ops, call=None):
    """The training operator's backward; `call(op, *args)` runs each backward operator (default: plainly)."""
    call = call or _plain_call

    def backward(ctx, grad_y, _grad_stats):
        x, stats, weight = ctx.saved_tensors
        dx, dw, db = call(ops.batch_norm_train_backward.default, grad_y, x, stats, weight, ctx.relu)
        return dx, dw if weight is not None else None, db if ctx.has_bias else None, None, None
    return backward


def _eval_setup(ctx, inputs, output) -> None:
    x, mean, _var, weight, bias, _eps, relu = inputs
    ctx.save_for_backward(x, mean, weight, output[1])
    ctx.relu, ctx.has_bias = relu, bias is not None
    ctx.mark_non_differentiable(output[1])


def _eval_backward(ops, call=None):
    """The prediction operator's backward; `call` as in `_train_backward`."""
    call = call or _plain_call

    def backward(ctx, grad_y, _grad_coefficients):
        x, mean, weight, coefficients = ctx.saved_tensors
        wants = ctx.needs_input_grad
        dx = call(ops.batch_norm_eval_backward.default, grad_y, x, coefficients, ctx.relu) if wants[0] else None
        d_mean = d_var = dw = db = None
        if any(wants[1:5]):
            d_mean, d_var, dw, db = call(ops.batch_norm_eval_backward_statistics.default, grad_y, x, mean, weight,
                                         coefficients, ctx.relu)
        return dx, d_mean, d_var, dw if weight is not None else None, db if ctx.has_bias else None, None, None
    return backward


def _plain_call(op, *args):
    return op(*args)


def _refuse_double_backward(ctx, *grads):
    raise RuntimeError(NO_DOUBLE_BACKWARD)


# torch.func's transforms refuse the autograd.Function that register_autograd generates (it has no
# setup_context: pytorch/pytorch#170834), so under them the same formulas run as these Functions,
# whose forward is the operator below autograd and whose vmap rule is the operators' own. The
# operators' namespace comes last, so that needs_input_grad counts the operators' inputs.

class FunctorchTrain(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, eps, relu, ops):
        return ops.batch_norm_train.default(x, weight, bias, eps, relu)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.ops = inputs[-1]
        _train_setup(ctx, inputs[:-1], output)

    @staticmethod
    def backward(ctx, grad_y, grad_stats):
        return *_train_backward(ctx.ops, FunctorchBackward.call)(ctx, grad_y, grad_stats), None


class FunctorchPredict(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x, mean, var, weight, bias, eps, relu, ops):
        return ops.batch_norm_eval.default(x, mean, var, weight, bias, eps, relu)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.ops = inputs[-1]
        _eval_setup(ctx, inputs[:-1], output)

    @staticmethod
    def backward(ctx, grad_y, grad_coefficients):
        return *_eval_backward(ctx.ops, FunctorchBackward.call)(ctx, grad_y, grad_coefficients), None


class FunctorchBackward(torch.autograd.Function):
    """A backward operator under torch.func: its result is differentiable only to refuse it (torch.func.grad
    builds the graph of every gradient; a second derivative is not silently zero)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(op, *args):
        return op(*args)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(NO_DOUBLE_BACKWARD)

    @staticmethod
    def call(op, *args):
        return FunctorchBackward.apply(op, *args)


# vmap rules. A vmapped call is one kernel call: the vmapped dimension B is folded into the channels,
# (B, N, C, *) → (N, B·C, *), so that every (b, c) pair is a channel of its own (its own batch
# statistics, its own γ and β), and unfolded from the outputs. Prediction mode with statistics and
# parameters shared across B folds B into the batch instead, (B·N, C, *), which needs no copy.

def _fold_channels(t: Tensor, bdim: int | None, size: int) -> Tensor:
    """A batch (N, C, *) at vmap level, physically batched at `bdim` (None: shared), as (N, B·C, *)."""
    t = t.unsqueeze(1).expand(t.shape[0], size, *t.shape[1:]) if bdim is None else t.movedim(bdim, 1)
    return t.reshape(t.shape[0], -1, *t.shape[3:])


def _unfold_channels(t: Tensor, size: int) -> Tensor:
    return t.reshape(t.shape[0], size, -1, *t.shape[2:])  # (N, B, C, *): out dim 1


def _fold_vector(t: Tensor | None, bdim: int | None, size: int) -> Tensor | None:
    """A per-channel (C,) tensor as (B·C,)."""
    if t is None:
        return None
    return t.repeat(size) if bdim is None else t.movedim(bdim, 0).reshape(-1).contiguous()


def _fold_rows(t: Tensor, bdim: int | None, size: int) -> Tensor:
    """A (rows, C) tensor of per-channel rows as (rows, B·C)."""
    if bdim is None:
        return t.repeat(1, size)
    t = t.movedim(bdim, 1)
    return t.reshape(t.shape[0], -1)


def _fold_batch(t: Tensor, bdim: int | None, size: int) -> Tensor:
    """A batch (N, C, *) as (B·N, C, *)."""
    t = t.unsqueeze(0).expand(size, *t.shape) if bdim is None else t.movedim(bdim, 0)
    return t.reshape(-1, *t.shape[2:])


def vmap_rules(ops) -> dict:
    """The operators' batching rules (torch.library.register_vmap), by operator name."""

    def train(info, in_dims, x, weight, bias, eps, relu):
        b, (x_dim, w_dim, b_dim, *_) = info.batch_size, in_dims
        y, stats = ops.batch_norm_train.default(_fold_channels(x, x_dim, b), _fold_vector(weight, w_dim, b),
                                                _fold_vector(bias, b_dim, b), eps, relu)
        return (_unfold_channels(y, b), stats.reshape(stats.shape[0], b, -1)), (1, 1)

    def train_backward(info, in_dims, grad_y, x, stats, weight, relu):
        b, (g_dim, x_dim, s_dim, w_dim, _) = info.batch_size, in_dims
        dx, dw, db = ops.batch_norm_train_backward.default(
            _fold_channels(grad_y, g_dim, b), _fold_channels(x, x_dim, b), _fold_rows(stats, s_dim, b),
            _fold_vector(weight, w_dim, b), relu)
        return (_unfold_channels(dx, b), dw.reshape(b, -1), db.reshape(b, -1)), (1, 0, 0)

    def update_running_stats(info, in_dims, stats, running_mean, running_var, counter, count, factor):
        b, (s_dim, m_dim, v_dim, *_) = info.batch_size, in_dims
        if m_dim is None or v_dim is None:
            raise RuntimeError("bnrun: vmap over batch norm in training mode would update running statistics that "
                               "the vmapped models share; call torch.func.replace_all_batch_norm_modules_(model) "
                               "first, or stack the buffers too (torch.func.stack_module_state)")
        mean, var = (t.movedim(d, 0) for t, d in ((running_mean, m_dim), (running_var, v_dim)))
        folded_mean, folded_var = mean.reshape(-1), var.reshape(-1)
        ops.update_running_stats.default(_fold_rows(stats, s_dim, b), folded_mean, folded_var, None, count, factor)
        if folded_mean.data_ptr() != mean.data_ptr() or folded_var.data_ptr() != var.data_ptr():
            mean.copy_(folded_mean.view_as(mean))  # the fold copied: write the update back
            var.copy_(folded_var.view_as(var))
        if counter is not None:
            counter.add_(1)
        return None, None

    def predict(info, in_dims, x, mean, var, weight, bias, eps, relu):
        b, (x_dim, *per_channel_dims, _, _) = info.batch_size, in_dims
        if all(d is None for d in per_channel_dims):
            y, coefficients = ops.batch_norm_eval.default(_fold_batch(x, x_dim, b), mean, var, weight, bias, eps, relu)
            return (y.reshape(b, -1, *y.shape[1:]), coefficients), (0, None)
        folded = (_fold_vector(t, d, b) for t, d in zip((mean, var, weight, bias), per_channel_dims))
        y, coefficients = ops.batch_norm_eval.default(_fold_channels(x, x_dim, b), *folded, eps, relu)
        return (_unfold_channels(y, b), coefficients.reshape(coefficients.shape[0], b, -1)), (1, 1)

    def predict_backward(info, in_dims, grad_y, x, coefficients, relu):
        b, (g_dim, x_dim, c_dim, _) = info.batch_size, in_dims
        if c_dim is None:
            dx = ops.batch_norm_eval_backward.default(_fold_batch(grad_y, g_dim, b), _fold_batch(x, x_dim, b),
                                                      coefficients, relu)
            return dx.reshape(b, -1, *dx.shape[1:]), 0
        dx = ops.batch_norm_eval_backward.default(_fold_channels(grad_y, g_dim, b), _fold_channels(x, x_dim, b),
                                                  _fold_rows(coefficients, c_dim, b), relu)
        return _unfold_channels(dx, b), 1

    def predict_backward_statistics(info, in_dims, grad_y, x, mean, weight, coefficients, relu):
        b, (g_dim, x_dim, m_dim, w_dim, c_dim, _) = info.batch_size, in_dims
        grads = ops.batch_norm_eval_backward_statistics.default(
            _fold_channels(grad_y, g_dim, b), _fold_channels(x, x_dim, b), _fold_vector(mean, m_dim, b),
            _fold_vector(weight, w_dim, b), _fold_rows(coefficients, c_dim, b), relu)
        return tuple(g.reshape(b, -1) for g in grads), (0, 0, 0, 0)

    def moments(info, in_dims, x):
        mean, squares = ops.moments.default(_fold_channels(x, in_dims[0], info.batch_size))
        return (mean.reshape(info.batch_size, -1), squares.reshape(info.batch_size, -1)), (0, 0)

    return {"batch_norm_train": train, "batch_norm_train_backward": train_backward,
            "update_running_stats": update_running_stats, "batch_norm_eval": predict,
            "batch_norm_eval_backward": predict_backward,
            "batch_norm_eval_backward_statistics": predict_backward_statistics, "moments": moments}


class CpuKernel:
    """One loaded build of the kernel: its operators (`ops`, torch.ops.<namespace>) and what the
    build holds (`isa()`, `version`: kernel_build.KERNEL_VERSION as built, `stream_bytes()`,
    `set_reuse_grad`, `grads_reused()`, `to_bf16`); `train` and `eval` call its eager binding (the
    operators' kernels and autograd nodes in one call, without the dispatcher), `moments` its
    operator; each says when it cannot serve an input."""

    def __init__(self, module: ModuleType):
        self.module = module
        self.namespace: str = module.namespace
        self.version: int = module.version
        register_python_side(self.namespace)
        self.ops = getattr(torch.ops, self.namespace)

    def isa(self) -> str:
        return self.module.isa()

    def to_bf16(self, x: Tensor) -> Tensor:
        return self.module.to_bf16(x)

    def stream_bytes(self) -> int:
        """The bytes a pass's tensors take from which it streams its output: this machine's
        last-level cache size, unless set_stream_bytes changed it."""
        return self.module.stream_bytes()

    def set_stream_bytes(self, bytes_: int) -> int:
        """Sets stream_bytes() for every later call; returns the value it replaces."""
        return self.module.set_stream_bytes(bytes_)

    def set_reuse_grad(self, reuse: bool) -> bool:
        """Whether the eager training node writes dx over an output gradient that nothing else holds
        (default True); returns the value it replaces."""
        return self.module.set_reuse_grad(reuse)

    def grads_reused(self) -> int:
        """How many training backward calls of this process wrote dx over the output gradient."""
        return self.module.grads_reused()

    def train(self, x: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
              running_var: Tensor | None, factor: float, eps: float, relu: bool = False,
              counter: Tensor | None = None) -> tuple[Tensor | None, str]:
        """(y, "") from the training step, or (None, why) for input the kernel does not serve."""
        return self.module.train_step(x, weight, bias, running_mean, running_var, counter, factor, eps, relu)

    def eval(self, x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
             relu: bool = False) -> tuple[Tensor | None, str]:
        """(y, "") in prediction mode, or (None, why) for input the kernel does not serve."""
        return self.module.eval_step(x, mean, var, weight, bias, eps, relu)

    def moments(self, x: Tensor) -> tuple[int, Tensor | None, Tensor | None]:
        """(count, mean, Σ(x − μ)²), or (0, None, None) for input the kernel does not serve."""
        if unsupported(x):
            return 0, None, None
        return moments(self.ops, x)
