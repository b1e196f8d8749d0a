"""`convert_batchnorm`: a model's torch.nn batch-norm layers swapped for bnrun's, in place, as
`torch.nn.SyncBatchNorm.convert_sync_batchnorm` swaps them for its own; `to_torch`, its inverse,
for the deployment tools that select torch's layers by exact type (`torch.fx.experimental.
optimization.fuse`, `torch.ao.quantization.fuse_modules` and `fuse_modules_qat`)."""

from __future__ import annotations

import warnings

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

from bnrun.nn.batchnorm import BatchNorm1d, BatchNorm2d
from bnrun.nn.batchnorm import _BatchNorm as _BnrunBatchNorm

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
    if isinstance(module, _BnrunBatchNorm):
        return module
    if isinstance(module, _BatchNorm):
        return _converted(module, fused)
    return _with_children_replaced(module, lambda child: convert_batchnorm(child, fused))


def to_torch(module: nn.Module) -> nn.Module:
    """`module` with every bnrun BatchNorm1d/2d in it (itself included) replaced by torch.nn's, which
    takes over the same parameter and buffer tensors, training mode, eps, momentum, affine and
    track_running_stats; the inverse of `convert_batchnorm`, in place as it is. A layer with the
    ReLU fused (`relu=True`) becomes `nn.Sequential(BatchNorm, nn.ReLU())`. Ghost batches
    (`ghost_batch`) change only training-mode statistics, which torch's layer computes over the
    whole batch: such a layer converts with one warning. Outputs in eval mode are unchanged."""
    if isinstance(module, _BnrunBatchNorm):
        return _to_torch_layer(module)
    return _with_children_replaced(module, to_torch)


def _with_children_replaced(module: nn.Module, replace) -> nn.Module:
    for name, child in module.named_children():
        replaced = replace(child)
        if replaced is not child:
            module.add_module(name, replaced)
    return module


def _torch_layer_class(layer: _BnrunBatchNorm) -> type[nn.Module]:
    return getattr(nn, next(name for name, ours in _BNRUN_LAYERS.items() if isinstance(layer, ours)))


def _to_torch_layer(layer: _BnrunBatchNorm) -> nn.Module:
    if layer.ghost_batch is not None:
        warnings.warn(f"bnrun.nn.to_torch: a layer with ghost_batch={layer.ghost_batch} becomes torch's, whose "
                      "training-mode statistics are the whole batch's", UserWarning, stacklevel=3)
    theirs = _torch_layer_class(layer)(layer.num_features, layer.eps, layer.momentum, layer.affine,
                                       layer.track_running_stats, device="meta")
    _move_state(layer, theirs)
    theirs.train(layer.training)
    return nn.Sequential(theirs, nn.ReLU()) if layer.relu else theirs


def _move_state(source: nn.Module, target: nn.Module) -> None:
    """`target` takes over `source`'s parameter and buffer tensors (the same tensors, so their device,
    dtype and optimizer state carry over)."""
    for name in _STATE:
        value = getattr(source, name)
        if name in target._parameters:
            target._parameters[name] = value
        else:
            target._buffers[name] = value


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
    _move_state(layer, ours)
    return ours.train(layer.training)
