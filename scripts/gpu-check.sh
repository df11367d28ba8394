#!/usr/bin/env bash
# Everything that needs a GPU, in one command, on a bare machine with one or
# two NVIDIA GPUs, a CUDA build of torch and no network (docs/gpu.md).
#
#   scripts/gpu-check.sh [--out DIR] [--wheels DIR] [--work DIR] [--steps NAME ...]
#
# The report goes to --out (default: $OUT, else gpu-check-report/). The
# wheels come from `make gpu-wheels` (.gpu-wheels/). PYTHON picks the
# machine's Python, the one whose torch is to be used (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."

# Without a GPU there is nothing to check: say so before any Python starts.
if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo "gpu-check: no NVIDIA GPU on this machine (nvidia-smi lists none). It needs one or two" \
    "NVIDIA GPUs and a CUDA build of torch; see docs/gpu.md." >&2
  exit 2
fi
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
