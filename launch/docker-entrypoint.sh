#!/usr/bin/env bash
# Container entrypoint.
#   docker run --gpus all IMAGE                       train on this node's GPUs (tiny demo model)
#   docker run --gpus all IMAGE [train] OVERRIDES...  train with Hydra overrides, e.g. parallel=tp2
#   docker run IMAGE eval|export-hf|plan|...          any other chatbaker command
#   docker run IMAGE bash                             any program in the image
# One node unless MASTER_ADDR, NNODES and NODE_RANK (and optionally
# MASTER_PORT, GPUS_PER_NODE, RDZV_ID) are set: then this node's share of a
# multi-node run. src/chatbaker_megatron/launch.py decides and sets the ranks'
# environment; SIGTERM (docker stop), SIGUSR1 and SIGINT reach the ranks, which
# save a checkpoint before exiting (docker stop's default 10 s grace is short
# for a large model: use `docker stop -t 120`). A rank that dies is restarted
# (launch.max_restarts).
set -euo pipefail
PYTHON=${PYTHON:-python}

case "${1:-}" in
  train) shift ;;
  # An override (key=value), a flag (--cfg job, -m) or nothing: training.
  *=* | -* | "") ;;
  *)
    if "$PYTHON" -c 'import sys; from chatbaker_megatron.cli import VERBS; sys.exit(sys.argv[1] not in VERBS)' "$1"; then
      exec "$PYTHON" -m chatbaker_megatron.cli "$@"
    fi
    exec "$@"
    ;;
esac
exec "$PYTHON" -m chatbaker_megatron.launch "$@"
