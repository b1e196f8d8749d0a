"""Population statistics: after training, replace every BN layer's running averages with the
exact mean and unbiased variance of that layer's input over the whole training set (as training
saw it: the caller passes the augmented images when training augments).

Layers are processed in forward order; each pass runs the model in prediction mode, so the BN
layers before the current one already use their population statistics, exactly as they will at
prediction time. A pass stops right after the current layer's input is seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from bnrun.nn import fused
from bnrun.nn.functional import channel_view, reduction_dims


class _StopForward(Exception):
    """Raised inside a hook once the layer of interest has seen its input."""


class RunningMoments:
    """Exact per-channel count, mean and sum of squared deviations. Each batch's moments are
    computed as the training kernel computes batch statistics (`batch_moments`), then merged across
    batches in float64 with Chan et al.'s parallel update, so the error does not grow with the
    number of batches."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def add(self, x: Tensor) -> None:
        n, mean, m2 = batch_moments(x.detach())
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def unbiased_var(self) -> Tensor:
        return self.m2 / (self.count - 1)


def batch_moments(x: Tensor) -> tuple[int, Tensor, Tensor]:
    """(count, mean, Σ(x − μ)²) per channel, float64: from one read of the batch by the C++ kernel
    (blocks summed twice in float32 while in cache, merged in double), else in two eager passes."""
    fast = fused.moments(x)
    if fast is not None:
        return fast
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    dims = reduction_dims(x)
    batch_mean = x.mean(dims)
    centered = x - channel_view(batch_mean, x)
    return x.numel() // x.shape[1], batch_mean.double(), centered.mul_(centered).sum(dims).double()


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """Every batch-norm layer of `model` (bnrun's or torch's) that tracks running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def forward_order(model: nn.Module, layers: list[nn.Module], sample: Tensor) -> list[nn.Module]:
    """The order in which `layers` are called by a forward pass on `sample`."""
    seen: list[nn.Module] = []
    hooks = [layer.register_forward_pre_hook(lambda mod, _inp: seen.append(mod)) for layer in layers]
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for hook in hooks:
            hook.remove()
    return list(dict.fromkeys(seen))


@torch.no_grad()
def layer_input_moments(model: nn.Module, layer: nn.Module, batches: Iterable[Tensor]) -> RunningMoments:
    """Moments of `layer`'s input over all batches, with the model in prediction mode."""
    moments = RunningMoments()

    def capture(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        moments.add(inputs[0])
        raise _StopForward

    hook = layer.register_forward_pre_hook(capture)
    try:
        for x in batches:
            try:
                model(x)
            except _StopForward:
                pass
    finally:
        hook.remove()
    return moments


@torch.no_grad()
def recompute_population_statistics(
    model: nn.Module,
    batches: Callable[[], Iterable[Tensor]],
    on_layer: Callable[[int, int], None] | None = None,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Set each BN layer's running_mean/var to its population mean/unbiased variance.

    `batches` returns a fresh iterable of input batches (the whole training set) per call.
    Returns {layer name: (mean, var)}. The model is left in prediction mode.
    """
    names = {module: name for name, module in model.named_modules()}
    layers = batchnorm_layers(model)
    model.eval()
    if not layers:
        return {}
    first = next(iter(batches()))
    ordered = forward_order(model, layers, first)
    result: dict[str, tuple[Tensor, Tensor]] = {}
    for index, layer in enumerate(ordered):
        moments = layer_input_moments(model, layer, batches())
        layer.running_mean.copy_(moments.mean.to(layer.running_mean.dtype))
        layer.running_var.copy_(moments.unbiased_var().to(layer.running_var.dtype))
        result[names[layer]] = (layer.running_mean.clone(), layer.running_var.clone())
        if on_layer is not None:
            on_layer(index + 1, len(ordered))
    return result
