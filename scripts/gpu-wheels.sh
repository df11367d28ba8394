#!/usr/bin/env bash
# The wheel set scripts/gpu-check.sh installs on a GPU machine with no network:
# what importing chatbaker_megatron and composing a config need beyond the
# packages such a machine has (torch, triton, transformers, tokenizers,
# safetensors, numpy, pyyaml, rich, tqdm, psutil, pytest). Versions come from
# constraints.txt. About 3 MB. docs/gpu.md.
#
#   scripts/gpu-wheels.sh [DIR]        (default .gpu-wheels; PYTHON=.venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
dir=${1:-.gpu-wheels}

rm -rf "$dir"
mkdir -p "$dir"
# For the GPU machine's interpreter and platform, not this one's.
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -c constraints.txt \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 -d "$dir" \
  megatron-core hydra-core omegaconf
# hydra's parser runtime is published as an sdist only: build its (pure Python) wheel here.
"$PYTHON" -m pip wheel --quiet --no-deps -c constraints.txt -w "$dir" antlr4-python3-runtime
ls -l "$dir"
