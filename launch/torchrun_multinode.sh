#!/usr/bin/env bash
# Run on EVERY node: torchrun with c10d rendezvous at MASTER_ADDR:MASTER_PORT.
#   MASTER_ADDR=node0 MASTER_PORT=29500 NNODES=32 NODE_RANK=$i GPUS_PER_NODE=8 \
#     launch/torchrun_multinode.sh experiment=plm_1.3b_a100x256
# Every rank composes the same Hydra config from the same overrides; the run
# directory (run_dir) must be on a filesystem all nodes share (checkpoints).
set -euo pipefail
: "${MASTER_ADDR:?set MASTER_ADDR to the first node's address}"
: "${NNODES:?set NNODES}"
: "${NODE_RANK:?set NODE_RANK (0..NNODES-1)}"
MASTER_PORT=${MASTER_PORT:-29500}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
exec torchrun \
  --nnodes="$NNODES" \
  --node-rank="$NODE_RANK" \
  --nproc-per-node="$GPUS_PER_NODE" \
  --rdzv-backend=c10d \
  --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" \
  --rdzv-id="${RDZV_ID:-chatbaker}" \
  -m chatbaker_megatron.train "$@"
