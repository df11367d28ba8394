#!/usr/bin/env bash
# Container entrypoint: torchrun on this node with the Hydra overrides given as
# arguments. Multi-node: set MASTER_ADDR, MASTER_PORT, NNODES, NODE_RANK (and
# GPUS_PER_NODE, default 8) in the container's environment.
set -euo pipefail
exec "$(dirname "$0")/torchrun_multinode.sh" "$@"
