"""The study's models: an MLP and a small CNN, with batch norm before the activation
("pre": g(BN(f(x)))), after it ("post": BN(g(f(x)))), or not at all ("none").

BN follows every hidden affine/conv layer, never the output layer. BN layers draw no random
numbers, so for one seed every placement and implementation starts from identical weights.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

import bnrun.nn as bnn

from bnrun.config import ARCHS, BN_IMPLS, PLACEMENTS
from bnrun.precision import in_layout

MLP_WIDTHS = (784, 256, 128)
CNN_CHANNELS = (32, 64)
CNN_HIDDEN = 128
NUM_CLASSES = 10


def norm_factory(dim: int, impl: str, fused: bool) -> Callable[..., nn.Module]:
    """A constructor `num_features -> BN layer` for 1d (dim=1) or 2d (dim=2) batch norm; the
    custom one also takes `relu=True` (ReLU applied inside the layer)."""
    if impl == "torch":
        return nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d
    if impl != "custom":
        raise ValueError(f"unknown BN implementation {impl!r}; expected one of {BN_IMPLS}")
    layer = bnn.BatchNorm1d if dim == 1 else bnn.BatchNorm2d
    return lambda num_features, relu=False: layer(num_features, fused=fused, relu=relu)


def hidden_block(affine: nn.Module, width: int, bn: str, norm: Callable[..., nn.Module], relu_in_norm: bool = False) -> list[nn.Module]:
    """f, then g = ReLU, with BN placed before g (pre), after g (post) or nowhere (none).
    `relu_in_norm` (the fused custom BN): pre's ReLU runs in the BN layer's own output pass, and an
    Identity keeps the unfused model's layer indices, so state_dicts stay interchangeable."""
    if bn == "pre" and relu_in_norm:
        return [affine, norm(width, relu=True), nn.Identity()]
    if bn == "pre":
        return [affine, norm(width), nn.ReLU()]
    if bn == "post":
        return [affine, nn.ReLU(), norm(width)]
    if bn == "none":
        return [affine, nn.ReLU()]
    raise ValueError(f"unknown BN placement {bn!r}; expected one of {PLACEMENTS}")


def build_mlp(bn: str = "pre", impl: str = "custom", fused: bool = False) -> nn.Sequential:
    """784-256-128-10 MLP on flattened 28×28 images."""
    norm, relu_in_norm = norm_factory(1, impl, fused), fused and impl == "custom"
    layers: list[nn.Module] = [nn.Flatten()]  # (B, 1, 28, 28) -> (B, 784)
    for width_in, width_out in zip(MLP_WIDTHS, MLP_WIDTHS[1:]):
        layers += hidden_block(nn.Linear(width_in, width_out), width_out, bn, norm, relu_in_norm)
    layers.append(nn.Linear(MLP_WIDTHS[-1], NUM_CLASSES))
    return nn.Sequential(*layers)


def build_cnn(bn: str = "pre", impl: str = "custom", fused: bool = False) -> nn.Sequential:
    """Two 3×3 conv blocks (32, 64 channels) each with 2×2 max-pooling, a 128-unit layer, 10 outputs."""
    norm2d, norm1d = norm_factory(2, impl, fused), norm_factory(1, impl, fused)
    relu_in_norm = fused and impl == "custom"
    c1, c2 = CNN_CHANNELS
    return nn.Sequential(
        *hidden_block(nn.Conv2d(1, c1, 3, padding=1), c1, bn, norm2d, relu_in_norm),  # (B, 32, 28, 28)
        nn.MaxPool2d(2),  # (B, 32, 14, 14)
        *hidden_block(nn.Conv2d(c1, c2, 3, padding=1), c2, bn, norm2d, relu_in_norm),  # (B, 64, 14, 14)
        nn.MaxPool2d(2),  # (B, 64, 7, 7)
        nn.Flatten(),  # (B, 3136)
        *hidden_block(nn.Linear(c2 * 7 * 7, CNN_HIDDEN), CNN_HIDDEN, bn, norm1d, relu_in_norm),
        nn.Linear(CNN_HIDDEN, NUM_CLASSES),
    )


def build_model(arch: str, bn: str, impl: str = "custom", fused: bool = False, channels_last: bool = False) -> nn.Sequential:
    """The model for one trial; weights are drawn from torch's global RNG (seed it first).
    `channels_last` changes only the memory order of the weights, not their values."""
    if arch == "mlp":
        return build_mlp(bn, impl, fused)
    if arch == "cnn":
        return in_layout(build_cnn(bn, impl, fused), channels_last)
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS}")


def bn_path(model: nn.Module, bn: str, impl: str) -> str | None:
    """The batch-norm path the model's last training batch took: none, torch, or the custom
    layers' paths (fused-cpu, compiled, eager; "+"-joined if layers differed); None before any."""
    if bn == "none":
        return "none"
    if impl == "torch":
        return "torch"
    paths = sorted({m.path for m in model.modules() if isinstance(m, (bnn.BatchNorm1d, bnn.BatchNorm2d)) and m.path})
    return "+".join(paths) or None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
