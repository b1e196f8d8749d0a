"""bnrun's from-scratch Batch Normalization: functional core, modules and population statistics."""

from bnrun.nn.batchnorm import BatchNorm1d, BatchNorm2d
from bnrun.nn.population import batchnorm_layers, recompute_population_statistics

__all__ = ["BatchNorm1d", "BatchNorm2d", "batchnorm_layers", "recompute_population_statistics"]
