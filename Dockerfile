# ChatBaker training image: NVIDIA's PyTorch container (CUDA, NCCL, Transformer
# Engine, flash-attn and apex preinstalled) plus this package at pinned versions.
# Build:  docker build -t chatbaker-megatron .
# Run:    docker run --gpus all chatbaker-megatron [train] [OVERRIDES]   (one node, all GPUs)
#         multi-node: also -e MASTER_ADDR -e NNODES -e NODE_RANK; see launch/docker-entrypoint.sh
# The base is the container megatron-core 0.19.x is tested on: Megatron-LM's
# core_r0.19.0 CI builds on docker/.ngc_version.dev = pytorch:26.06-py3
# (torch 2.13.0a0, CUDA 13.3, Python 3.12; versions in docs/gpu.md).
FROM nvcr.io/nvidia/pytorch:26.06-py3

# The ranks' environment (CUDA_DEVICE_MAX_CONNECTIONS, NCCL) is set by
# src/chatbaker_megatron/launch.py, which the entrypoint runs.
# TORCH_CUDA_ARCH_LIST: build the CUDA extension for A100 and H100 although
# `docker build` sees no GPU (setup.py builds it when this is set).
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TORCH_CUDA_ARCH_LIST="8.0;9.0"

WORKDIR /workspace/chatbaker_megatron

# Dependencies first, for layer caching. Every package the NGC image ships
# (torch, numpy, TE, flash-attn, apex, ...) is kept at the image's version: the
# constraints are this project's pins minus the image's packages, plus the
# image's own `pip list` (the image's /etc/pip/constraint.txt is set aside for
# this install, PIP_CONSTRAINT='', since it also pins build-only packages).
# megatron-core goes in without its dependencies (torch, numpy, packaging: the
# image's), as a0 pre-release torch builds do not satisfy torch>=2.6.0 for pip.
COPY constraints.txt setup.py pyproject.toml README.md ./
COPY src ./src
COPY kernels ./kernels
COPY conf ./conf
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN pip list --format=freeze > /tmp/image-packages.txt \
    && awk -F'[=<>!~; ]' 'function key(name) { name = tolower(name); gsub(/[-_.]+/, "-", name); return name } \
           NR == FNR { image[key($1)] = 1; next } !(key($1) in image)' \
           /tmp/image-packages.txt constraints.txt > /tmp/constraints-ngc.txt \
    && cat /tmp/image-packages.txt >> /tmp/constraints-ngc.txt \
    && pip install --no-deps "megatron-core==0.19.2" \
    && CHATBAKER_BUILD_CUDA=1 pip install --no-deps --no-build-isolation -e . \
    && PIP_CONSTRAINT='' pip install -c /tmp/constraints-ngc.txt hydra-core tokenizers \
       transformers safetensors lm-eval rich tqdm psutil tensorboard matplotlib \
    && python -c "import chatbaker_megatron, megatron.core, importlib.util as u; assert u.find_spec('chatbaker_kernels._cuda_rmsnorm')"

COPY launch ./launch
COPY scripts ./scripts

ENTRYPOINT ["launch/docker-entrypoint.sh"]
CMD ["train"]
