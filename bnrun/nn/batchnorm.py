"""`BatchNorm1d` and `BatchNorm2d`: thin modules over `bnrun.nn.functional`.

Constructor signature, parameter and buffer names match `torch.nn.BatchNorm1d/2d`, so a
state_dict moves between the two in either direction.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnrun.nn import functional as F
from bnrun.nn import fused as fused_kernels


class _BatchNorm(nn.Module):
    """Shared state and forward; subclasses only say which input ranks they accept."""

    _accepted_ranks: tuple[int, ...] = ()
    _shape_names: str = ""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
        fused: bool = False,
        relu: bool = False,
    ) -> None:
        """torch.nn.BatchNorm1d/2d's arguments (torch 2.14, `bias` included: False keeps γ and
        drops β), plus bnrun's own: `fused` (the C++/compiled fast path) and `relu` (the layer is
        ReLU(BN(x)), applied in the fused kernel's output pass)."""
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.fused = fused
        self.relu = relu  # the layer is ReLU(BN(x)): the fused kernel applies it in its output pass
        self.path: str | None = None  # the training-mode path the last batch took (fused.PATHS)
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **factory))
            if bias:
                self.bias = nn.Parameter(torch.zeros(num_features, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    # Parameters and buffers are read from their dicts (where nn.Module keeps them) rather than as
    # attributes: nn.Module.__getattr__ costs a microsecond or more each, a noticeable share of a
    # small layer's step.

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if self.training or not self.track_running_stats:
            return self._forward_batch_stats(x)
        buffers, params = self._buffers, self._parameters
        mean, var, weight, bias = buffers["running_mean"], buffers["running_var"], params["weight"], params["bias"]
        if self.fused and x.shape[0] > 0:
            return fused_kernels.eval_step(x, mean, var, weight, bias, self.eps, self.relu)
        y = F.batch_norm_eval(x, mean, var, weight, bias, self.eps)
        return torch.relu(y) if self.relu else y

    def _forward_batch_stats(self, x: Tensor) -> Tensor:
        buffers, params = self._buffers, self._parameters
        tracking = self.training and self.track_running_stats
        counter = buffers["num_batches_tracked"] if tracking else None
        empty = x.shape[0] == 0
        if counter is not None and (self.momentum is None or not self.fused or empty):
            counter.add_(1)  # otherwise the fused kernel counts the batch in the same call
            factor = self.momentum if self.momentum is not None else 1.0 / float(counter)
            counter = None
        else:
            factor = self.momentum if tracking else 0.0
        if empty:  # as torch: an empty batch gives an empty output and leaves the statistics alone
            return x.clone()
        running = (buffers["running_mean"], buffers["running_var"]) if tracking else (None, None)
        weight, bias = params["weight"], params["bias"]
        if self.fused:
            y, path = fused_kernels.train_step(x, weight, bias, *running, factor, self.eps, self.relu, counter)
        else:
            path = fused_kernels.EAGER
            y = F.batch_norm_train_and_track(x, weight, bias, *running, factor, self.eps)
            y = torch.relu(y) if self.relu else y
        # The label stays out of traced graphs (torch.compile, torch.export): recorded eagerly only.
        # nn.Module.__setattr__ is slow; the path rarely changes.
        if path != self.path and not torch.compiler.is_compiling():
            self.path = path
        return y

    def _check_input(self, x: Tensor) -> None:
        shape = x.shape
        if len(shape) not in self._accepted_ranks:
            raise ValueError(f"{type(self).__name__} expected {self._shape_names} input, got a {len(shape)}D tensor "
                             f"of shape {tuple(shape)}")
        channels = shape[1]
        if channels != self.num_features or channels == 0:
            name = type(self).__name__
            if channels == 0:
                raise ValueError(f"{name} expected at least one channel, got input of shape {tuple(shape)}")
            raise ValueError(f"{name}({self.num_features}) expected {self.num_features} channels, got {channels} "
                             f"(input shape {tuple(shape)})")
        if self.training and shape[0] > 0 and x.numel() == channels:
            raise ValueError(f"{type(self).__name__} expected more than 1 value per channel when training, got input "
                             f"of shape {tuple(shape)}")

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}, fused={self.fused}" + (", relu=True" if self.relu else "")
        )


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L) input; statistics per channel over N (and L)."""

    _accepted_ranks = (2, 3)
    _shape_names = "2D (N, C) or 3D (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) input; statistics per channel over N·H·W."""

    _accepted_ranks = (4,)
    _shape_names = "4D (N, C, H, W)"
