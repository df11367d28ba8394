"""A checkpoint's model (saved at any TP/PP/VPP) built in this process at TP=1, PP=1."""

from __future__ import annotations

from dataclasses import replace

import torch

from chatbaker_megatron import platform
from chatbaker_megatron.checkpoint.reader import MegatronCheckpoint
from chatbaker_megatron.config.model import KernelsConfig
from chatbaker_megatron.config.parallel import ParallelConfig
from chatbaker_megatron.model.llama import build_model, padded_vocab_size
from chatbaker_megatron.model.sharding import EMBEDDING, OUTPUT_LAYER, load_full_state
from chatbaker_megatron.parallel import single_process_model_parallel


def load_tp1_model(
    source: MegatronCheckpoint, vocab_size: int, dtype: torch.dtype, kernels: KernelsConfig
) -> torch.nn.Module:
    """The whole model in `dtype` on the platform device, with `kernels` instead of the saved ones.

    `vocab_size` is the tokenizer's. The whole model is read into memory
    (for generation, not for export).
    """
    single_process_model_parallel()
    model_cfg = replace(source.model, kernels=kernels)
    (model,) = build_model(
        model_cfg,
        ParallelConfig(),
        vocab_size=vocab_size,
        max_sequence_length=model_cfg.max_position_embeddings,
        params_dtype=dtype,
    )
    state = source.full_state()
    # The saved vocabulary is padded for the TP it was trained at, which is at
    # least TP1's padding. Rows past the tokenizer's are never looked up and
    # their logits are cut off by the callers, so the first `rows` will do.
    rows = padded_vocab_size(vocab_size, model_cfg.make_vocab_size_divisible_by, 1)
    for name in (EMBEDDING, OUTPUT_LAYER):
        state[name] = state[name][:rows]
    load_full_state([model], state)
    platform.detect().to_device(model)
    return model
