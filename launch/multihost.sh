#!/usr/bin/env bash
# Multi-host training without a scheduler: run this on every host with its own id.
#   COORDINATOR=10.0.0.1:1234 NUM_PROCESSES=2 PROCESS_ID=0 launch/multihost.sh CONFIG WORKDIR
set -euo pipefail
config=$1; workdir=$2; shift 2
: "${COORDINATOR:?host:port of process 0}" "${NUM_PROCESSES:?number of hosts}" "${PROCESS_ID:?0..N-1}"
python -m jaxvrp.train --config "$config" --workdir "$workdir" --config.distributed=True \
    --config.coordinator_address="$COORDINATOR" --config.num_processes="$NUM_PROCESSES" \
    --config.process_id="$PROCESS_ID" "$@"
