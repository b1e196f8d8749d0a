"""bnrun: an experiment runner for a from-scratch Batch Normalization on Fashion-MNIST."""

__version__ = "0.1.0"
