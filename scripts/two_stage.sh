#!/usr/bin/env bash
# Two-stage paper run: stage 1 (connector pre-training), then stage 2 from its connector.
# Usage: scripts/two_stage.sh SIZE [overrides...]    SIZE: 8b | 13b | 34b
# Hyperparameters live in configs/experiment/; extra overrides go to both stages.
set -euo pipefail
size=${1:?usage: scripts/two_stage.sh 8b|13b|34b [overrides...]}
shift
root=${RUN_ROOT:-runs}
cambrian-train "experiment=cambrian${size}_pretrain_v4_512" \
  "output_dir=${root}/cambrian${size}_pretrain" "$@"
cambrian-train "experiment=cambrian${size}_finetune_v4_512" \
  "output_dir=${root}/cambrian${size}_finetune" \
  "stages.finetune.init_from=${root}/cambrian${size}_pretrain/pretrain/checkpoint" "$@"
