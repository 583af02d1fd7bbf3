#!/usr/bin/env bash
# Start cambrian-train on every worker of a TPU VM pod slice: a thin wrapper over
# `cambrian-pod run` (tmux session "cambrian"; pid, log and exit code under ~/.cambrian/ on each
# worker; code and venv from `cambrian-pod setup`). `cambrian-pod retry` also survives preemptions.
# Usage: TPU=name ZONE=zone scripts/tpu_pod.sh experiment=... [overrides...]
#        (or CAMBRIAN_POD_NAME / CAMBRIAN_POD_ZONE / CAMBRIAN_POD_PROJECT in the environment)
# output_dir must name storage that every host shares.
set -euo pipefail
exec "${PYTHON:-python3}" -m cambrian_train.pod run ${TPU:+--name "$TPU"} ${ZONE:+--zone "$ZONE"} \
  -- "$@"
