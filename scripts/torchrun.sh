#!/usr/bin/env bash
# GPU launch, one node or several: torchrun with FSDP2 (backend=cuda_fsdp).
# Usage: scripts/torchrun.sh experiment=... [overrides...]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR (and MASTER_PORT) on every node, e.g. from SLURM.
set -euo pipefail
gpus=${GPUS_PER_NODE:-$(nvidia-smi -L | wc -l)}
exec torchrun --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$gpus" \
  --rdzv_backend c10d --rdzv_endpoint "${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-29500}" \
  -m cambrian_train backend=cuda_fsdp "$@"
