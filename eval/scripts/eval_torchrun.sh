#!/usr/bin/env bash
# Evaluate a suite data-parallel on one machine's GPUs: torchrun starts NPROC processes, each
# generates its share of every benchmark's batches (cambrian-eval's data parallelism: rank 0
# writes files byte-identical to a one-process run), then rank 0 prints the paper's table.
# Usage: eval/scripts/eval_torchrun.sh MODEL [SUITE] [run_suite.py options...]
# Environment: NPROC (processes; default: the number of GPUs), DEVICE (default cuda; cpu runs
#   gloo processes, e.g. NPROC=2 DEVICE=cpu for a check without GPUs), DATA_ROOT, OUT, PYTHON.
#   torchrun --standalone picks a free rendezvous port, so runs may share a machine.
set -euo pipefail

usage="usage: $0 MODEL [SUITE] [run_suite.py options...]"
model=${1:?$usage}
shift
suite=paper
if [[ $# -gt 0 && $1 != -* ]]; then
  suite=$1
  shift
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
device=${DEVICE:-cuda}
if [[ -n ${NPROC:-} ]]; then
  nproc=$NPROC
elif [[ $device == cuda ]] && command -v nvidia-smi > /dev/null; then
  nproc=$(nvidia-smi -L | wc -l)
else
  echo "$0: set NPROC (no GPU count for DEVICE=$device)" >&2
  exit 2
fi

args=(--model "$model" --suite "$suite" --device "$device")
if [[ -n ${DATA_ROOT:-} ]]; then args+=(--data-root "$DATA_ROOT"); fi
if [[ -n ${OUT:-} ]]; then args+=(--out "$OUT"); fi

exec "${PYTHON:-python3}" -m torch.distributed.run --standalone --nproc_per_node "$nproc" \
  "$here/../run_suite.py" "${args[@]}" "$@"
