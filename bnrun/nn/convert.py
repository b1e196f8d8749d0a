"""`convert_batchnorm`: a model's torch.nn batch-norm layers swapped for bnrun's, in place, as
`torch.nn.SyncBatchNorm.convert_sync_batchnorm` swaps them for its own."""

from __future__ import annotations

import warnings

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

from bnrun.nn.batchnorm import BatchNorm1d, BatchNorm2d

# bnrun's layer for each of torch's, by class name: bnrun/nn names no torch batch-norm class in its
# code (tests/test_batchnorm.py checks that it computes none of torch's), it only matches them here.
_BNRUN_LAYERS = {"BatchNorm1d": BatchNorm1d, "BatchNorm2d": BatchNorm2d}
_TORCH_MODULE = _BatchNorm.__module__
_STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def convert_batchnorm(module: nn.Module, fused: bool = False) -> nn.Module:
    """`module` with every torch.nn BatchNorm1d/2d in it (itself included) replaced by bnrun's
    (`fused`: the fast path), which takes over the same parameter and buffer tensors (so an
    optimizer built before still updates them, on their device and in their dtype), the
    training mode, eps, momentum, affine and track_running_stats. SyncBatchNorm and layers bnrun
    has no counterpart of (BatchNorm3d, lazy layers not yet initialized) stay as they are, with one
    warning each saying why. Returns the converted module (a new one only if `module` itself was
    a batch-norm layer), as `convert_sync_batchnorm` does."""
    if isinstance(module, _BatchNorm):
        return _converted(module, fused)
    for name, child in module.named_children():
        converted = convert_batchnorm(child, fused)
        if converted is not child:
            module.add_module(name, converted)
    return module


def _torch_class_name(layer: _BatchNorm) -> str:
    return next(cls.__name__ for cls in type(layer).__mro__ if cls.__module__ == _TORCH_MODULE)


def _converted(layer: _BatchNorm, fused: bool) -> nn.Module:
    kind = _torch_class_name(layer)
    if kind == "SyncBatchNorm":
        warnings.warn("bnrun.nn.convert_batchnorm: left a SyncBatchNorm as it is: bnrun's batch norm computes "
                      "each process's own batch statistics, SyncBatchNorm reduces them across processes",
                      UserWarning, stacklevel=3)
        return layer
    if kind not in _BNRUN_LAYERS or (isinstance(layer, LazyModuleMixin) and layer.has_uninitialized_params()):
        warnings.warn(f"bnrun.nn.convert_batchnorm: left a {kind} as it is: bnrun has batch norm for 1D and 2D "
                      "input of known channels only", UserWarning, stacklevel=3)
        return layer
    ours = _BNRUN_LAYERS[kind](layer.num_features, layer.eps, layer.momentum, layer.affine,
                               layer.track_running_stats, device="meta", fused=fused)
    for name in _STATE:  # the same tensors, so their device, dtype and optimizer state carry over
        value = getattr(layer, name)
        if name in ours._parameters:
            ours._parameters[name] = value
        else:
            ours._buffers[name] = value
    return ours.train(layer.training)
