#!/usr/bin/env bash
# Train (then evaluate) one config on this machine, every local device.
#   launch/local.sh configs/vrp_sam.py:dataset=pascal5i,fold=0 runs/vrp_f0 [--config.key=value ...]
set -euo pipefail
config=$1; workdir=$2; shift 2
python -m jaxvrp.train --config "$config" --workdir "$workdir" "$@"
python -m jaxvrp.evaluate --config "$config" --workdir "$workdir" "$@"
