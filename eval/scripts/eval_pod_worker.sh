#!/usr/bin/env bash
# What every worker of a TPU or GPU pod runs: evaluate this worker's shard of a suite's
# benchmarks into a shared OUT (a gs:// URL or a shared filesystem). The shards are balanced by
# expected item counts and every worker computes the same split (cambrian_train/eval/suite.py),
# so each benchmark is evaluated by exactly one worker. When all are done, from any machine:
#   python eval/run_suite.py --table-only --suite SUITE --out OUT [--paper]
# Usage: eval/scripts/eval_pod_worker.sh MODEL SUITE OUT [run_suite.py options...]
# Environment:
#   CAMBRIAN_PROCESS_COUNT  number of workers (default 1)
#   CAMBRIAN_PROCESS_INDEX  this worker, 0-based (else TPU_WORKER_ID, else the TPU VM's
#                           agent-worker-number metadata, as cambrian-pod does; required if
#                           none of them is known and the count is above 1)
#   NPROC                   processes on this worker (default 1; above 1 runs torchrun over the
#                           worker's GPUs, data parallel within each benchmark)
#   DEVICE                  cpu|cuda (default: cuda when available; cambrian-eval has no XLA
#                           device, so a TPU worker evaluates on its host CPUs)
#   DATA_ROOT               the suite's --data-root on this worker (each worker needs the data of
#                           its shard), PYTHON
# Example (every worker of a v4-32 slice, 4 hosts):
#   gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
#     "cd cambrian-train && CAMBRIAN_PROCESS_COUNT=4 DATA_ROOT=/data/eval \
#      eval/scripts/eval_pod_worker.sh gs://b/export paper gs://b/eval/my-model"
set -euo pipefail

usage="usage: $0 MODEL SUITE OUT [run_suite.py options...]"
model=${1:?$usage}
suite=${2:?$usage}
out=${3:?$usage}
shift 3
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

count=${CAMBRIAN_PROCESS_COUNT:-1}
index=${CAMBRIAN_PROCESS_INDEX:-${TPU_WORKER_ID:-}}
if [[ -z $index ]]; then
  if [[ $count -gt 1 ]]; then
    index=$(curl -sf --max-time 5 -H 'Metadata-Flavor: Google' \
      http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number \
      || true)
  fi
  if [[ -z $index && $count -gt 1 ]]; then
    echo "$0: set CAMBRIAN_PROCESS_INDEX (this worker among $count)" >&2
    exit 2
  fi
  index=${index:-0}
fi
echo "$0: worker $index of $count evaluates its shard of $suite into $out" >&2

args=(--model "$model" --suite "$suite" --out "$out" --shard-index "$index" --num-shards "$count")
if [[ -n ${DATA_ROOT:-} ]]; then args+=(--data-root "$DATA_ROOT"); fi
if [[ -n ${DEVICE:-} ]]; then args+=(--device "$DEVICE"); fi

nproc=${NPROC:-1}
if [[ $nproc -gt 1 ]]; then
  exec "${PYTHON:-python3}" -m torch.distributed.run --standalone --nproc_per_node "$nproc" \
    "$here/../run_suite.py" "${args[@]}" "$@"
fi
exec "${PYTHON:-python3}" "$here/../run_suite.py" "${args[@]}" "$@"
