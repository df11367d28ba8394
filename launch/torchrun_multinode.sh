#!/usr/bin/env bash
# Run on EVERY node: torchrun with c10d rendezvous at MASTER_ADDR:MASTER_PORT.
#   MASTER_ADDR=node0 MASTER_PORT=29500 NNODES=32 NODE_RANK=$i GPUS_PER_NODE=8 \
#     launch/torchrun_multinode.sh experiment=plm_1.3b_a100x256
# Every rank composes the same Hydra config from the same overrides; the run
# directory (run_dir) must be on a filesystem all nodes share (checkpoints).
# The torchrun command line (signals forwarded to the ranks; the restart budget
# --max-restarts=launch.max_restarts, read from the run's config: a dead rank
# restarts every rank, on every node, from the newest checkpoint) and the ranks'
# environment (CUDA_DEVICE_MAX_CONNECTIONS, NCCL) come from
# src/chatbaker_megatron/launch.py, which replaces this process with torchrun.
# Global rank 0 locks the run dir (<run_dir>/.lock): a second job there fails.
set -euo pipefail
: "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0}"
: "${NNODES:?set NNODES}"
: "${NODE_RANK:?set NODE_RANK (0..NNODES-1)}"
exec "${PYTHON:-python}" -m chatbaker_megatron.launch "$@"
