"""The study's models: an MLP and a small CNN, with batch norm before the activation
("pre": g(BN(f(x)))), after it ("post": BN(g(f(x)))), or not at all ("none").

BN follows every hidden affine/conv layer, never the output layer. BN layers draw no random
numbers, so for one seed every placement and implementation starts from identical weights.

Depth and width (`--depth`, `--width`): unset, each model is the assignment's (MLP 784-256-128-10;
CNN two conv blocks of 32 and 64 channels). The MLP at depth D has D hidden layers of width W
(default 128). The CNN at depth D has D 3×3 conv blocks, W channels in the first and 2W in the
rest (default W = 32), each followed by 2×2 max-pooling while the map is larger than 7×7 (so
blocks 3 and later keep the 7×7 map), then a 128-unit layer: depth 2 at width 32 is the
assignment's CNN, weight for weight. Dropout (`--dropout P`) closes each hidden block, after its
activation and, for BN post, after the BN too: f → BN → g → dropout, f → g → BN → dropout. Dropout
last keeps BN's statistics free of dropout's train/test shift (Li et al., 2019). The CNN may be
laid out channels_last (`in_layout`): the same weights in NHWC memory order.

Initialization (`--init`): `default` is torch's own nn.Linear/nn.Conv2d initialization (every
stored trial before the option). `kaiming` redraws, after the model is built, every hidden
affine/conv layer's weights He-normal (He et al., 2015: N(0, 2/fan_in), fan_in mode, ReLU gain),
and sets every bias to zero. The final classifier, which no ReLU follows, is drawn with gain 1
(N(0, 1/fan_in), LeCun normal) and a zero bias: the ReLU gain would double the logits' variance.

Ghost batches (`--ghost-batch N`): the BN layers take training-mode statistics over chunks of N
examples (`bnrun.nn.batchnorm.ghost_batch_norm`); the torch.nn reference does the same through
`TorchGhost`, which calls the same function over torch's `batch_norm`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bnrun.config import ARCHS, BN_IMPLS, INITS, PLACEMENTS
from bnrun.nn import BatchNorm1d, BatchNorm2d
from bnrun.nn.batchnorm import ghost_batch_norm

MLP_WIDTHS = (784, 256, 128)  # the assignment's MLP
MLP_WIDTH = 128  # hidden width of an MLP built by depth
MLP_DEPTH = 2
CNN_DEPTH, CNN_WIDTH = 2, 32  # the assignment's CNN: two conv blocks, 32 then 64 channels
CNN_HIDDEN = 128
NUM_CLASSES = 10
IMAGE_SIZE, SMALLEST_MAP = 28, 7


class TorchGhost:
    """torch.nn's batch norm with ghost batches in training mode: `ghost_batch_norm` over
    torch.nn.functional.batch_norm. Parameters and buffers are torch.nn's own (same state_dict)."""

    def __init__(self, num_features: int, *args, ghost_batch: int, **kwargs) -> None:
        super().__init__(num_features, *args, **kwargs)
        self.ghost_batch = ghost_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        self._check_input_dim(x)
        factor = 0.0
        if self.track_running_stats:  # counted once per batch, as torch.nn counts it
            self.num_batches_tracked.add_(1)
            factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)

        def normalize(chunks, weight, bias, mean, var):
            return nn.functional.batch_norm(chunks, mean, var, weight, bias, True, factor, self.eps)

        return ghost_batch_norm(x, self.ghost_batch, self.weight, self.bias, self.running_mean, self.running_var,
                                normalize)


class TorchGhostBatchNorm1d(TorchGhost, nn.BatchNorm1d):
    pass


class TorchGhostBatchNorm2d(TorchGhost, nn.BatchNorm2d):
    pass


def norm_factory(dim: int, impl: str, fused: bool, ghost_batch: int | None = None) -> Callable[..., nn.Module]:
    """A constructor `num_features -> BN layer` for 1d (dim=1) or 2d (dim=2) batch norm, over
    ghost batches of `ghost_batch` examples when given; the custom one also takes `relu=True`
    (ReLU applied inside the layer)."""
    if impl == "torch" and ghost_batch is None:
        return nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d
    if impl == "torch":
        ghost = TorchGhostBatchNorm1d if dim == 1 else TorchGhostBatchNorm2d
        return lambda num_features: ghost(num_features, ghost_batch=ghost_batch)
    if impl != "custom":
        raise ValueError(f"unknown BN implementation {impl!r}; expected one of {BN_IMPLS}")
    layer = BatchNorm1d if dim == 1 else BatchNorm2d
    return lambda num_features, relu=False: layer(num_features, fused=fused, relu=relu, ghost_batch=ghost_batch)


@dataclass(frozen=True)
class BlockSpec:
    """How every hidden block of one model is built: BN placement, BN constructors, dropout."""

    bn: str
    norm1d: Callable[..., nn.Module]
    norm2d: Callable[..., nn.Module]
    relu_in_norm: bool = False  # the fused custom BN applies pre's ReLU in its own output pass
    dropout: float = 0.0

    @classmethod
    def of(cls, bn: str, impl: str, fused: bool, dropout: float = 0.0, ghost_batch: int | None = None) -> BlockSpec:
        norms = (norm_factory(dim, impl, fused, ghost_batch) for dim in (1, 2))
        return cls(bn, *norms, fused and impl == "custom", dropout)


def hidden_block(affine: nn.Module, width: int, spec: BlockSpec, dim: int = 1) -> list[nn.Module]:
    """f, then g = ReLU, with BN placed before g (pre), after g (post) or nowhere (none), then
    dropout when asked. With `relu_in_norm`, an Identity keeps the unfused model's layer indices,
    so state_dicts stay interchangeable."""
    norm = spec.norm1d if dim == 1 else spec.norm2d
    if spec.bn == "pre" and spec.relu_in_norm:
        block = [affine, norm(width, relu=True), nn.Identity()]
    elif spec.bn == "pre":
        block = [affine, norm(width), nn.ReLU()]
    elif spec.bn == "post":
        block = [affine, nn.ReLU(), norm(width)]
    elif spec.bn == "none":
        block = [affine, nn.ReLU()]
    else:
        raise ValueError(f"unknown BN placement {spec.bn!r}; expected one of {PLACEMENTS}")
    return block + ([nn.Dropout(spec.dropout)] if spec.dropout else [])


def mlp_widths(depth: int | None, width: int | None) -> tuple[int, ...]:
    """Input and hidden widths: the assignment's 784-256-128, or `depth` layers of `width`."""
    if depth is None and width is None:
        return MLP_WIDTHS
    return (MLP_WIDTHS[0],) + (width or MLP_WIDTH,) * (MLP_DEPTH if depth is None else depth)


def build_mlp(spec: BlockSpec, depth: int | None = None, width: int | None = None) -> nn.Sequential:
    """An MLP on flattened 28×28 images (784-256-128-10 by default)."""
    widths = mlp_widths(depth, width)
    layers: list[nn.Module] = [nn.Flatten()]  # (B, 1, 28, 28) -> (B, 784)
    for width_in, width_out in zip(widths, widths[1:]):
        layers += hidden_block(nn.Linear(width_in, width_out), width_out, spec)
    layers.append(nn.Linear(widths[-1], NUM_CLASSES))
    return nn.Sequential(*layers)


def build_cnn(spec: BlockSpec, depth: int | None = None, width: int | None = None) -> nn.Sequential:
    """`depth` 3×3 conv blocks (2 by default: 32 then 64 channels, each with 2×2 max-pooling), a
    128-unit layer, 10 outputs."""
    base = width or CNN_WIDTH
    layers: list[nn.Module] = []
    channels, size = 1, IMAGE_SIZE
    for block in range(depth or CNN_DEPTH):
        out = base if block == 0 else 2 * base
        layers += hidden_block(nn.Conv2d(channels, out, 3, padding=1), out, spec, dim=2)  # (B, out, size, size)
        if size > SMALLEST_MAP:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        channels = out
    layers.append(nn.Flatten())  # (B, channels·size·size)
    layers += hidden_block(nn.Linear(channels * size * size, CNN_HIDDEN), CNN_HIDDEN, spec)
    layers.append(nn.Linear(CNN_HIDDEN, NUM_CLASSES))
    return nn.Sequential(*layers)


def in_layout(model: nn.Module, channels_last: bool) -> nn.Module:
    """The model with its 4D weights (the convolutions') in channels_last order when asked; a
    convolution then returns channels_last activations, and every later layer keeps that order."""
    return model.to(memory_format=torch.channels_last) if channels_last else model


def build_model(arch: str, bn: str, impl: str = "custom", fused: bool = False, channels_last: bool = False,
                depth: int | None = None, width: int | None = None, dropout: float = 0.0, init: str = "default",
                ghost_batch: int | None = None) -> nn.Sequential:
    """The model for one trial; weights are drawn from torch's global RNG (seed it first).
    `channels_last` changes only the memory order of the weights, not their values."""
    spec = BlockSpec.of(bn, impl, fused, dropout, ghost_batch)
    if arch == "mlp":
        return initialize(build_mlp(spec, depth, width), init)
    if arch == "cnn":
        return in_layout(initialize(build_cnn(spec, depth, width), init), channels_last)
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS}")


def initialize(model: nn.Sequential, init: str) -> nn.Sequential:
    """The model's weights as `init` says (the module docstring): torch's as built, or redrawn."""
    if init not in INITS:
        raise ValueError(f"unknown initialization {init!r}; expected one of {INITS}")
    if init == "kaiming":
        affine = [layer for layer in model if isinstance(layer, (nn.Linear, nn.Conv2d))]
        for layer in affine:
            gain = "linear" if layer is affine[-1] else "relu"  # the classifier: no ReLU follows it
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity=gain)
            nn.init.zeros_(layer.bias)
    return model


def model_of(config) -> nn.Sequential:
    """The model a trial configuration (TrainConfig or RunRecord) describes."""
    return build_model(config.arch, config.bn, config.bn_impl, config.fused, config.channels_last,
                       config.depth, config.width, config.dropout, config.init, config.ghost_batch)


def bn_path(model: nn.Module, bn: str, impl: str) -> str | None:
    """The batch-norm path the model's last training batch took: none, torch, or the custom
    layers' paths (fused-cpu, compiled, eager; "+"-joined if layers differed); None before any."""
    if bn == "none":
        return "none"
    if impl == "torch":
        return "torch"
    paths = sorted({m.path for m in model.modules() if isinstance(m, (BatchNorm1d, BatchNorm2d)) and m.path})
    return "+".join(paths) or None

