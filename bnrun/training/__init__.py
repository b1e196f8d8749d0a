"""Training, in pure torch: data, models, precision, the training loop, checkpoints, diagnostics and
evaluation. Knows no store and no CLI: `fit` reports epochs and the outcome through callbacks."""
