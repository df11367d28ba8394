#!/usr/bin/env bash
# One machine: `chatbaker train` starts torchrun itself with
# cluster.devices_per_node processes (2 CPU ranks by default, 8 GPUs with
# cluster=a100_8x1). Any Hydra override works, e.g. parallel=tp2. Ctrl-C or
# SIGTERM stops with a checkpoint (a second Ctrl-C at once); a rank that dies
# is restarted (launch.max_restarts); a second job in the same run_dir is refused.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m chatbaker_megatron.train "$@"
