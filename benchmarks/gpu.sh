#!/usr/bin/env bash
# SAM encoder throughput on one GPU (benchmarks/sam_encoder_gpu.py), from a source checkout.
#
#   bash benchmarks/gpu.sh              # ViT-B and ViT-H, bf16, batch 8 and 32
#   bash benchmarks/gpu.sh --smoke      # tiny size on any machine (CPU), under 2 minutes
#
# Needs jax (with CUDA for a GPU run), flax, numpy, torch and segment-anything installed.
# Extra arguments go to the Python script (e.g. --variants vit_b --iters 20).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# JAX and torch share the device: no preallocation of most of its memory by JAX.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
python -c "import jax; print('jax devices:', jax.devices())"
python -c "import torch; print('torch cuda:', torch.cuda.is_available())"
exec python benchmarks/sam_encoder_gpu.py "$@"
