"""`BatchNorm1d` and `BatchNorm2d`: thin modules over `bnrun.nn.functional`.

Constructor signature, parameter and buffer names match `torch.nn.BatchNorm1d/2d`, so a
state_dict moves between the two in either direction.

Ghost batch normalization (Hoffer et al., 2017, arXiv:1705.08741; `ghost_batch=N`): in training
mode the statistics are those of chunks of N consecutive examples of the batch, each chunk
normalized on its own; a batch that N does not divide gives its remainder to the last chunk (N to
2N − 1 examples), and a batch of fewer than 2N examples is one chunk. `ghost_batch_norm` reshapes
the chunks into channels of one batch, (N·k, C, *) → (N, k·C, *), and normalizes them in one call
of the same path (the fused kernel or the eager core). The running statistics are updated once
per batch with the average of the chunks' means and unbiased variances (as if each chunk updated
copies of them, then the copies were averaged), so the momentum's time constant in SGD steps is
the same at every N; Hoffer et al.'s Algorithm 1 instead updates them once per chunk, in turn.
Prediction mode is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from bnrun.nn import functional as F
from bnrun.nn import fused as fused_kernels


class _BatchNorm(nn.modules.batchnorm._BatchNorm):
    """Shared state and forward; subclasses only say which input ranks they accept.

    A subclass of torch's own `_BatchNorm` base, which owns the parameters, buffers,
    `reset_parameters` and the versioned `_load_from_state_dict` (a state_dict without
    `num_batches_tracked` loads), so that every torch utility that selects batch-norm layers by
    that base (`swa_utils.update_bn`, `convert_sync_batchnorm`, torch.func's
    `replace_all_batch_norm_modules_`, fvcore's PreciseBN) finds this one; `forward` is bnrun's own,
    and no torch batch-norm kernel runs."""

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
        ghost_batch: int | None = None,
    ) -> None:
        """torch.nn.BatchNorm1d/2d's arguments (torch 2.14, `bias` included: False keeps γ and
        drops β), plus bnrun's own: `fused` (the C++/compiled fast path), `relu` (the layer is
        ReLU(BN(x)), applied in the fused kernel's output pass) and `ghost_batch` (training-mode
        statistics over chunks of that many examples, `ghost_batch_norm`)."""
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.fused = fused
        self.relu = relu  # the layer is ReLU(BN(x)): the fused kernel applies it in its output pass
        self.ghost_batch = ghost_batch
        self.path: str | None = None  # the training-mode path the last batch took (fused.PATHS)

    def _check_input_dim(self, input: Tensor) -> None:
        self._check_input(input)

    # Parameters and buffers are read from their dicts (where nn.Module keeps them) rather than as
    # attributes: nn.Module.__getattr__ costs a microsecond or more each, a noticeable share of a
    # small layer's step.

    def forward(self, x: Tensor) -> Tensor:
        return batch_norm_layer(self, x)

    def _forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if self.training:
            y = self._fused_cpu_step(x) if self.fused and self.ghost_batch is None else None
            return self._forward_batch_stats(x) if y is None else y
        buffers, params = self._buffers, self._parameters
        mean, var, weight, bias = buffers["running_mean"], buffers["running_var"], params["weight"], params["bias"]
        if mean is None or var is None:  # as torch: running statistics in eval mode where held
            return self._forward_batch_stats(x)
        if self.fused and x.shape[0] > 0:
            return fused_kernels.eval_step(x, mean, var, weight, bias, self.eps, self.relu)
        y = F.batch_norm_eval(x, mean, var, weight, bias, self.eps)
        return torch.relu(y) if self.relu else y

    def _fused_cpu_step(self, x: Tensor) -> Tensor | None:
        """The training step of nearly every fused call in one call of the kernel's eager binding
        (`fused.cpu_train_step`): the layer's Python is a share of a small layer's step. None
        where that call does not apply: no momentum (the cumulative average counts the batch first),
        an empty batch, or what `fused.cpu_train_step` declines; `_forward_batch_stats` then takes
        the input."""
        buffers = self._buffers
        running_mean = buffers["running_mean"]
        tracking = self.track_running_stats and running_mean is not None
        if (tracking and self.momentum is None) or x.shape[0] == 0:
            return None
        params = self._parameters
        if tracking:
            y = fused_kernels.cpu_train_step(x, params["weight"], params["bias"], running_mean, buffers["running_var"],
                                             self.momentum, self.eps, self.relu, buffers["num_batches_tracked"])
        else:
            y = fused_kernels.cpu_train_step(x, params["weight"], params["bias"], None, None, 0.0, self.eps, self.relu)
        if y is not None and self.path != fused_kernels.FUSED_CPU:
            self.path = fused_kernels.FUSED_CPU
        return y

    def _forward_batch_stats(self, x: Tensor) -> Tensor:
        buffers, params = self._buffers, self._parameters
        tracking = self.training and self.track_running_stats and buffers["running_mean"] is not None
        ghost = self.ghost_batch is not None and self.training
        counter = buffers["num_batches_tracked"] if tracking else None
        empty = x.shape[0] == 0
        if counter is not None and (self.momentum is None or not self.fused or empty or ghost):
            counter.add_(1)  # otherwise the fused kernel counts the batch in the same call
            factor = self.momentum if self.momentum is not None else 1.0 / float(counter)
            counter = None
        else:
            factor = self.momentum if tracking else 0.0
        if empty:  # as torch: an empty output, the statistics left alone, zero gradients for γ and β
            return empty_batch_norm(x, params["weight"], params["bias"])
        running = (buffers["running_mean"], buffers["running_var"]) if tracking else (None, None)
        weight, bias = params["weight"], params["bias"]
        if ghost:
            def normalize(chunks, chunk_weight, chunk_bias, chunk_mean, chunk_var):
                return self._normalize(chunks, chunk_weight, chunk_bias, chunk_mean, chunk_var, factor)

            return ghost_batch_norm(x, self.ghost_batch, weight, bias, *running, normalize)
        return self._normalize(x, weight, bias, *running, factor, counter)

    def _normalize(self, x: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
                   running_var: Tensor | None, factor: float, counter: Tensor | None = None) -> Tensor:
        """Training-mode batch norm (then ReLU with `relu`) through the fused or the eager path."""
        if self.fused:
            y, path = fused_kernels.train_step(x, weight, bias, running_mean, running_var, factor, self.eps,
                                               self.relu, counter)
        else:
            path = fused_kernels.EAGER
            y = F.batch_norm_train_and_track(x, weight, bias, running_mean, running_var, factor, self.eps)
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
            + (f", ghost_batch={self.ghost_batch}" if self.ghost_batch is not None else "")
        )


# normalize(x, weight, bias, running_mean, running_var) -> y: training-mode batch norm over x's
# channels, updating the running buffers in place (None: not tracked).
Normalize = Callable[[Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None], Tensor]


def ghost_batch_norm(x: Tensor, size: int, weight: Tensor | None, bias: Tensor | None,
                     running_mean: Tensor | None, running_var: Tensor | None, normalize: Normalize) -> Tensor:
    """Training-mode batch norm of `x` over chunks of `size` examples (the module docstring's
    ghost batches): the chunks of exactly `size` in one `normalize` call, a last chunk that took
    the remainder in a second; the running buffers are then set to the average over the chunks of
    what each chunk's update made of them."""
    n = x.shape[0]
    if n < 2 * size:
        return normalize(x, weight, bias, running_mean, running_var)
    even = n // size - (1 if n % size else 0)  # chunks of exactly `size`; the last takes the remainder
    parts = [(x[: even * size], even)] + ([(x[even * size:], 1)] if even * size < n else [])
    outputs, means, variances = [], [], []
    for part, chunks in parts:
        y, mean, var = normalize_chunks(part, chunks, weight, bias, running_mean, running_var, normalize)
        outputs.append(y)
        means.append(mean)
        variances.append(var)
    if running_mean is not None:
        with torch.no_grad():
            running_mean.copy_(torch.cat(means).mean(0))
            running_var.copy_(torch.cat(variances).mean(0))
    return F.laid_out_as(torch.cat(outputs), x)


def normalize_chunks(x: Tensor, chunks: int, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
                     running_var: Tensor | None, normalize: Normalize) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """`x` (chunks·n examples) normalized chunk by chunk in one call: chunk j's channels become channels
    j·C to j·C + C − 1 of an (n, chunks·C, *) batch. Returns the output in x's order and each chunk's
    updated copy of the running statistics, (chunks, C) each (None when not tracked)."""
    n, c, rest = x.shape[0] // chunks, x.shape[1], x.shape[2:]
    ghosts = x.reshape(chunks, n, c, *rest).transpose(0, 1).reshape(n, chunks * c, *rest)  # (n, chunks·C, *)
    weight, bias = (None if t is None else t.repeat(chunks) for t in (weight, bias))
    mean, var = (None if t is None else t.detach().repeat(chunks) for t in (running_mean, running_var))
    y = normalize(ghosts, weight, bias, mean, var)
    y = y.reshape(n, chunks, c, *rest).transpose(0, 1).reshape(x.shape)  # back to (chunks·n, C, *)
    return y, *(None if t is None else t.view(chunks, c) for t in (mean, var))


def batch_norm_layer(layer: _BatchNorm, x: Tensor) -> Tensor:
    """`layer`'s forward. torch.fx records it as one call (`torch.fx.wrap`), as it records torch's
    own layers as one module call: symbolic tracing sees neither the input checks nor the choice
    between batch and running statistics, which the traced graph makes at run time, as the layer does."""
    return layer._forward(x)


torch.fx.wrap("batch_norm_layer")


def empty_batch_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """The output for a batch of no examples: empty, yet connected to γ and β, whose gradients are
    then zeros, as torch's."""
    y = x.clone()
    if weight is not None:
        y = y * F.channel_view(weight, x)
    if bias is not None:
        y = y + F.channel_view(bias, x)
    return y.to(x.dtype)


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L) input; statistics per channel over N (and L)."""

    _accepted_ranks = (2, 3)
    _shape_names = "2D (N, C) or 3D (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) input; statistics per channel over N·H·W."""

    _accepted_ranks = (4,)
    _shape_names = "4D (N, C, H, W)"
