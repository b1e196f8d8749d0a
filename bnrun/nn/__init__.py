"""bnrun's from-scratch Batch Normalization: functional core, modules, the fused kernel's
operators (`torch.ops.bnrun.*`, registered on the kernel's first use), population statistics and
the conversion of a torch.nn model's batch-norm layers and back."""

from bnrun.nn.batchnorm import BatchNorm1d, BatchNorm2d
from bnrun.nn.convert import convert_batchnorm, to_torch
from bnrun.nn.population import batchnorm_layers, recompute_population_statistics

__all__ = ["BatchNorm1d", "BatchNorm2d", "batchnorm_layers", "convert_batchnorm", "recompute_population_statistics",
           "to_torch"]
