# ChatBaker training image: NVIDIA's PyTorch container (CUDA, NCCL, Transformer
# Engine, flash-attn and apex preinstalled) plus this package at pinned versions.
# Build:  docker build -t chatbaker-megatron .
# Run:    docker run --gpus all chatbaker-megatron [train] [OVERRIDES]   (one node, all GPUs)
#         multi-node: also -e MASTER_ADDR -e NNODES -e NODE_RANK; see launch/docker-entrypoint.sh
FROM nvcr.io/nvidia/pytorch:25.01-py3

# The ranks' environment (CUDA_DEVICE_MAX_CONNECTIONS, NCCL) is set by
# src/chatbaker_megatron/launch.py, which the entrypoint runs.
# TORCH_CUDA_ARCH_LIST: build the CUDA extension for A100 and H100 although
# `docker build` sees no GPU (setup.py builds it when this is set).
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TORCH_CUDA_ARCH_LIST="8.0;9.0"

WORKDIR /workspace/chatbaker_megatron

# Dependencies first, for layer caching. The NGC image's own torch, numpy, TE,
# flash-attn and apex are kept: the image's exact torch/numpy versions are
# pinned as constraints on top of this project's other pins, and megatron-core
# goes in without its dependencies, since its torch>=2.6.0 excludes the image's
# 2.6.0a0 pre-release (pip would replace it, or refuse the pin).
COPY constraints.txt setup.py pyproject.toml README.md ./
COPY src ./src
COPY kernels ./kernels
COPY conf ./conf
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN grep -vE '^(torch|triton|numpy|nvidia-|cuda-)' constraints.txt > /tmp/constraints-ngc.txt \
    && pip list --format=freeze | grep -E '^(torch|numpy)==' >> /tmp/constraints-ngc.txt \
    && pip install --no-deps "megatron-core==0.19.2" \
    && CHATBAKER_BUILD_CUDA=1 pip install --no-deps --no-build-isolation -e . \
    && pip install -c /tmp/constraints-ngc.txt hydra-core tokenizers \
       transformers safetensors lm-eval rich tqdm psutil tensorboard matplotlib \
    && python -c "import chatbaker_megatron, megatron.core, importlib.util as u; assert u.find_spec('chatbaker_kernels._cuda_rmsnorm')"

COPY launch ./launch
COPY scripts ./scripts

ENTRYPOINT ["launch/docker-entrypoint.sh"]
CMD ["train"]
