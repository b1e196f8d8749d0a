"""The compiled path: the eager training step compiled by torch.compile, the fast path of every
device but the CPU (the C++ operators are CPU kernels; a model compiled whole on the CPU traces
those operators instead, see `fused.py`). The batch dimension is dynamic, so one graph serves every
batch size of a shape (the last partial batch, evaluation batches); `warm_up` compiles a model's
graphs, forward and backward, before a trial's first epoch; no step builds a tensor from host data.
A compile failure warns once and the eager step runs from then on."""

from __future__ import annotations

import copy
import functools
from typing import Callable

import torch
from torch import Tensor, nn

from bnrun.nn.paths import COMPILED, EAGER, eager_step, warn_fallback

RECOMPILE_LIMIT = 64


def compiled_train_step(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None, running_var: Tensor | None,
    factor: float, eps: float, relu: bool = False, counter: Tensor | None = None,
) -> tuple[Tensor, str]:
    """`fused.train_step` through torch.compile (the path of every device but the CPU's; the tests
    run it on CPU tensors): the batch dimension marked dynamic, the factor a device tensor made once."""
    if counter is not None:
        counter.add_(1)
    kernel = compiled_kernel(relu)
    torch._dynamo.maybe_mark_dynamic(x, 0)
    factor_tensor = _factor_tensor(factor, x.dtype if running_mean is None else running_mean.dtype, x.device)
    y = kernel(x, weight, bias, running_mean, running_var, factor_tensor, eps)
    return y, COMPILED if kernel.compiled is not None else EAGER


@functools.lru_cache(maxsize=64)
def _factor_tensor(factor: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The running-statistics factor as a 0-dim tensor on `device`: a tensor, so that a changing
    value (momentum=None) never recompiles; made by a fill on the device (no copy from the host, no
    wait), once per value."""
    return torch.full((), factor, dtype=dtype, device=device)


def warm_up(model: nn.Module, x: Tensor) -> None:
    """Compile the training step's graphs for `model` fed batches like `x`: a training-mode forward
    and backward, and a forward without gradients (batch-statistics evaluation), on a copy of the
    model with the random streams restored, so the trial's weights, running statistics and random
    draws are untouched. Compile time then stays out of the first epoch, and a compiled backward that
    fails, which would otherwise surface in the trial's own `loss.backward()`, outside the fallback,
    turns the compiled path off here, with the usual warning."""
    probe = copy.deepcopy(model).train()
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        try:
            probe(x).float().sum().backward()
            with torch.no_grad():
                probe(x)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # noqa: BLE001 - any compile failure means "no compiled path here"
            warn_fallback(error)
            for relu in (False, True):
                compiled_kernel(relu).compiled = None


class _CompiledOrEager:
    """Calls the compiled kernel; on the first compile failure warns and stays eager for good."""

    def __init__(self, eager: Callable):
        self.eager = eager
        self.compiled: Callable | None = _try_compile(eager)

    def __call__(self, *args):
        if self.compiled is None:
            return self.eager(*args)
        try:
            return self.compiled(*args)
        except torch.OutOfMemoryError:  # the device is full: the eager step would not fit either
            raise
        except Exception as error:  # noqa: BLE001 - any backend failure means "no fast path here"
            warn_fallback(error)
            self.compiled = None
            return self.eager(*args)


def _try_compile(fn: Callable) -> Callable | None:
    # One graph per channel count (parameters have static shapes), rank, layout, dtype and grad
    # mode: a trial with diagnostics makes 6 of one step function, a sweep over models in one
    # process more, so the limit (8 by default) is raised. Past it torch would run the step eagerly
    # and say nothing; raising instead lets `_CompiledOrEager` fall back with a warning, and the run
    # record the eager path.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    try:
        return torch.compile(fn, fullgraph=True)
    except Exception as error:  # noqa: BLE001
        warn_fallback(error)
        return None


@functools.cache
def compiled_kernel(relu: bool = False) -> _CompiledOrEager:
    """The process-wide torch.compile'd training step (then ReLU when `relu`) for non-CPU devices,
    compiled once per channel shape, layout, dtype and grad mode (batch sizes share a graph)."""
    return _CompiledOrEager(eager_step(relu))
