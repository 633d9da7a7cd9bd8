#!/usr/bin/env bash
# Train on every worker of a Cloud TPU pod slice (the repository and data on each worker,
# the workdir on shared storage, e.g. a gs:// bucket or NFS).
#   TPU=my-pod ZONE=us-central2-b launch/tpu_pod.sh configs/vrp_sam.py:dataset=coco20i gs://b/run
# Every argument reaches the workers' `python` exactly as given (spaces, quotes, `=`): the
# remote command line is built with bash's `printf %q` (the workers' shell is bash).
set -euo pipefail
config=$1; workdir=$2; shift 2
: "${TPU:?TPU name}" "${ZONE:?zone}"
remote="cd ~/jaxvrp && python -m jaxvrp.train"
printf -v quoted ' %q' --config "$config" --workdir "$workdir" --config.distributed=True "$@"
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$remote$quoted"
