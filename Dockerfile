# ChatBaker training image: NVIDIA's PyTorch container (CUDA, NCCL, Transformer
# Engine, flash-attn and apex preinstalled) plus this package at pinned versions.
# Build:  docker build -t chatbaker-megatron .
# Run:    see launch/ (torchrun on every node; SLURM: launch/slurm_a100x256.sbatch)
FROM nvcr.io/nvidia/pytorch:25.01-py3

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NCCL_ASYNC_ERROR_HANDLING=1 \
    TORCH_NCCL_ASYNC_ERROR_HANDLING=1

WORKDIR /workspace/chatbaker_megatron

# Dependencies first, for layer caching. The NGC image's own torch, TE,
# flash-attn and apex are kept: only this project's other pins are installed.
COPY constraints.txt setup.py pyproject.toml README.md ./
COPY src ./src
COPY kernels ./kernels
COPY conf ./conf
RUN grep -vE '^(torch|triton|nvidia-|cuda-)' constraints.txt > /tmp/constraints-ngc.txt \
    && pip install --no-deps --no-build-isolation -e . \
    && pip install -c /tmp/constraints-ngc.txt "megatron-core==0.19.2" hydra-core tokenizers \
       transformers safetensors lm-eval rich tqdm psutil tensorboard matplotlib \
    && python -c "import chatbaker_megatron, megatron.core"

COPY launch ./launch
COPY scripts ./scripts

ENTRYPOINT ["launch/docker-entrypoint.sh"]
CMD ["experiment=plm_1.3b_a100x256"]
