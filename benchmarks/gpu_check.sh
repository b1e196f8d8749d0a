#!/usr/bin/env bash
# The one check of bnrun's CUDA path on a machine with an NVIDIA GPU: parity of the custom fused
# batch norm with torch.nn's on CUDA (outputs and gradients), the path that ran, compiled graphs
# and recompiles, host synchronizations in training steps, and step times, as one table.
# Usage: bash benchmarks/gpu_check.sh   (exit 2 without a GPU, 1 if a check failed)
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
[ -x "$python" ] || python=python3
exec "$python" benchmarks/gpu_check.py "$@"
