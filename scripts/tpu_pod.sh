#!/usr/bin/env bash
# Run the same cambrian-train command on every worker of a TPU VM pod slice, inside tmux.
# Usage: TPU=name ZONE=zone scripts/tpu_pod.sh experiment=... [overrides...]
# output_dir must name the same shared directory on every host.
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
  "tmux new-session -d -s cambrian 'cd ~/cambrian-train && PJRT_DEVICE=TPU cambrian-train backend=xla_spmd${args} 2>&1 | tee -a ~/cambrian-train.log'"
