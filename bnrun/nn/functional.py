"""Batch Normalization as plain functions (Ioffe & Szegedy, 2015, arXiv:1502.03167).

Training mode normalizes with the statistics of the mini-batch; prediction mode with given
(running or population) statistics. Statistics are per channel, over every axis except dim 1:
(N) for (N, C), (N, L) for (N, C, L), (N, H, W) for (N, C, H, W).

The training-mode gradient is derived by hand (see `BatchNormFunction`), not taken by autograd
over the forward ops, so the backward pass costs two reductions and one elementwise pass.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def reduction_dims(x: Tensor) -> tuple[int, ...]:
    """The axes a per-channel statistic reduces over: all but the channel axis 1."""
    return (0,) + tuple(range(2, x.dim()))


def values_per_channel(x: Tensor) -> int:
    """How many values each channel's statistic is computed from (N, N*L or N*H*W)."""
    return x.numel() // x.shape[1]


def channel_view(t: Tensor, x: Tensor) -> Tensor:
    """Reshape a (C,) vector so it broadcasts against `x` along axis 1: (1, C, 1, ...)."""
    if x.dim() == 2:  # (C,) already broadcasts against (N, C); skipping the view saves a call per use
        return t
    return t.view((1, -1) + (1,) * (x.dim() - 2))


def centered_statistics(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel mean and *biased* variance, each (C,), plus the centered batch x − μ.

    Two passes (mean, then the mean of squared deviations), as torch's own kernel does: as
    accurate as Welford's update, and on CPU several times faster than `torch.var_mean`, whose
    reduction over non-contiguous axes is not vectorized (measured in benchmarks/bn_layer.py).
    """
    dims = reduction_dims(x)
    mean = x.mean(dims)
    centered = x - channel_view(mean, x)
    return mean, (centered * centered).mean(dims), centered


def in_op_math(x: Tensor) -> Tensor:
    """x in the precision batch-norm arithmetic runs in: float32 for 16-bit floats, else x itself."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def laid_out_as(t: Tensor, like: Tensor) -> Tensor:
    """t, dense in `like`'s memory format (contiguous or channels_last), copied only if it is not."""
    channels_last = (like.dim() == 4 and not like.is_contiguous()
                     and like.is_contiguous(memory_format=torch.channels_last))
    return t.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def unbiased(var: Tensor, n: int) -> Tensor:
    """Bessel's correction of a biased variance computed from n values."""
    return var * (n / (n - 1))


def scale_shift(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """x · scale + shift with per-channel (C,) scale and shift, in a new tensor."""
    scale, shift = channel_view(scale, x), channel_view(shift, x)
    if x.dim() == 2:
        return torch.addcmul(shift, x, scale)
    # CPU addcmul does not vectorize a (1, C, 1, 1) broadcast; two binary passes are ~2x faster.
    return (x * scale).add_(shift)


def normalize_forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Training-mode forward: returns (y, x_hat, inv_std, mean, biased var).

    After the statistics, x̂ = (x − μ)·(1/σ̂) overwrites the centered batch, then y = γ·x̂ + β.
    """
    mean, var, centered = centered_statistics(x)
    inv_std = torch.rsqrt(var + eps)
    x_hat = centered.mul_(channel_view(inv_std, x))
    if weight is None and bias is None:
        return x_hat, x_hat, inv_std, mean, var
    weight = torch.ones_like(inv_std) if weight is None else weight
    bias = torch.zeros_like(inv_std) if bias is None else bias
    return scale_shift(x_hat, weight, bias), x_hat, inv_std, mean, var


def normalize_backward(
    grad_y: Tensor, x_hat: Tensor, inv_std: Tensor, weight: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form gradients (dx, dγ, dβ) of the training-mode forward; see BatchNormFunction."""
    dims = reduction_dims(x_hat)
    grad_bias = grad_y.sum(dims)
    grad_weight = (grad_y * x_hat).sum(dims)
    scale = inv_std if weight is None else inv_std * weight
    m = values_per_channel(x_hat)
    # dx = γ/σ̂ · (dy − (Σdy + x̂·Σ(dy·x̂))/m), with Σdy = dβ and Σ(dy·x̂) = dγ.
    grad_x = scale_shift(x_hat, grad_weight / -m, grad_bias / -m)
    if torch._C._are_functorch_transforms_active():  # under vmap one operand may be batched and another not
        grad_x = (grad_x + grad_y) * channel_view(scale, x_hat)
    else:
        grad_x.add_(grad_y).mul_(channel_view(scale, x_hat))
    return grad_x, grad_weight, grad_bias


class BatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm with a hand-derived backward.

    Forward, per channel over m values: μ = mean(x), σ² = mean((x−μ)²) (biased),
    x̂ = (x−μ)/√(σ²+ε), y = γ·x̂ + β.

    Backward: dβ = Σ dy and dγ = Σ dy·x̂. Writing dx̂ = γ·dy and using ∂x̂ᵢ/∂xⱼ =
    (δᵢⱼ − 1/m − x̂ᵢx̂ⱼ/m)/σ̂ (σ̂ = √(σ²+ε)), which follows from ∂μ/∂xⱼ = 1/m and
    ∂σ²/∂xⱼ = 2(xⱼ−μ)/m, the chain rule collapses to
        dx = γ/(m·σ̂) · (m·dy − Σdy − x̂·Σ(dy·x̂)),
    which needs only the saved x̂ and 1/σ̂.
    Returns (y, mean, biased var); the statistics carry no gradient.

    16-bit input (bfloat16 under autocast) is normalized in float32, the statistics, x̂ and the
    gradient sums stay float32, and y and dx come back in the input's dtype, as in torch's kernel.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
        ctx.input_dtype = x.dtype
        y, x_hat, inv_std, mean, var = normalize_forward(in_op_math(x), weight, bias, eps)
        ctx.save_for_backward(x_hat, inv_std, weight)
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        ctx.mark_non_differentiable(mean, var)
        ctx.set_materialize_grads(False)
        return y.to(x.dtype), mean, var

    @staticmethod
    @once_differentiable  # the closed form is not itself differentiated: double backward raises, never silently wrong
    def backward(ctx, grad_y: Tensor, *_grad_statistics: Tensor):
        return closed_form_backward(ctx, grad_y)


def closed_form_backward(ctx, grad_y: Tensor | None) -> tuple:
    """`BatchNormFunction`'s backward from the saved x̂, 1/σ̂ and γ: (dx, dγ, dβ, None)."""
    if grad_y is None:  # only the (non-differentiable) statistics were used downstream
        return None, None, None, None
    x_hat, inv_std, weight = ctx.saved_tensors
    grad_y = laid_out_as(in_op_math(grad_y), x_hat)
    grad_x, grad_weight, grad_bias = normalize_backward(grad_y, x_hat, inv_std, weight)
    return (grad_x.to(ctx.input_dtype), grad_weight if ctx.has_weight else None,
            grad_bias if ctx.has_bias else None, None)


class FunctorchBatchNormFunction(torch.autograd.Function):
    """`BatchNormFunction` in the form torch.func's transforms take (a forward without ctx, setup_context,
    a generated vmap rule), used only under them: it returns x̂ and 1/σ̂ too, as outputs, since functorch
    lets the backward keep only inputs and outputs (x̂ is None where it is y itself, without γ and β).
    The plain path keeps the old form, a quarter faster on a small layer's step."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
        y, x_hat, inv_std, mean, var = normalize_forward(in_op_math(x), weight, bias, eps)
        y = y.to(x.dtype)
        return y, mean, var, None if x_hat is y else x_hat, inv_std

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, bias, _eps = inputs
        y, mean, var, x_hat, inv_std = output
        ctx.input_dtype = x.dtype
        ctx.save_for_backward(y if x_hat is None else x_hat, inv_std, weight)
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        ctx.mark_non_differentiable(*(t for t in (mean, var, x_hat, inv_std) if t is not None))
        ctx.set_materialize_grads(False)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor, *_grad_statistics: Tensor):
        return closed_form_backward(ctx, grad_y)


def batch_norm_train(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5
) -> tuple[Tensor, Tensor, Tensor]:
    """Normalize with batch statistics; returns (y, batch mean, biased batch var)."""
    if torch._C._are_functorch_transforms_active():
        y, mean, var, _x_hat, _inv_std = FunctorchBatchNormFunction.apply(x, weight, bias, eps)
        return y, mean, var
    return BatchNormFunction.apply(x, weight, bias, eps)


def batch_norm_train_and_track(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    factor: Tensor | float,
    eps: float = 1e-5,
) -> Tensor:
    """Training mode in full: normalize with batch statistics and, when running statistics are
    given, fold the batch statistics into them (`factor` is the EMA weight)."""
    y, mean, var = batch_norm_train(x, weight, bias, eps)
    if running_mean is not None:
        update_running_stats(running_mean, running_var, mean, var, values_per_channel(x), factor)
    return y


def batch_norm_eval_coefficients(
    mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5
) -> tuple[Tensor, Tensor]:
    """Prediction mode as a per-channel affine map: (scale, shift) with BN(x) = scale·x + shift."""
    inv_std = torch.rsqrt(var + eps)
    scale = inv_std if weight is None else weight * inv_std
    shift = -mean * scale if bias is None else bias - mean * scale
    return scale, shift


def batch_norm_eval(
    x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5
) -> Tensor:
    """Prediction mode: normalize with fixed per-channel statistics (running or population)."""
    scale, shift = batch_norm_eval_coefficients(mean, var, weight, bias, eps)
    return (in_op_math(x) * channel_view(scale, x) + channel_view(shift, x)).to(x.dtype)


@torch.no_grad()
def update_running_stats(
    running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor, n: int, factor: Tensor | float
) -> None:
    """Exponential moving average in place; the variance enters *unbiased*, as in torch.nn."""
    for running, batch in ((running_mean, mean), (running_var, unbiased(var, n))):
        batch = batch.to(running.dtype)
        if torch._C._are_functorch_transforms_active():  # vmap has a batching rule for lerp, none for lerp_
            running.copy_(torch.lerp(running, batch, factor))
        else:
            running.lerp_(batch, factor)
