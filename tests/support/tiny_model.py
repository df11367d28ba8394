"""The tiny LLaMA the multi-rank tests and benchmarks build, and its fixed random batches.

Tests that need other sizes derive them with `dataclasses.replace(TINY_MODEL, ...)`,
so every tiny model shares the features of the real ones.
"""

from __future__ import annotations

import torch

from chatbaker_megatron.config.model import ModelConfig

# Every feature of the real models (GQA, SwiGLU, untied embeddings) at a size
# where 8 CPU ranks finish a step in seconds.
TINY_MODEL = ModelConfig(
    num_layers=4,
    hidden_size=64,
    num_attention_heads=4,
    num_query_groups=2,
    ffn_hidden_size=176,
    max_position_embeddings=64,
)
VOCAB = 250
SEQ = 16


def micro_batches(
    micro: int, dp: int, dp_rank: int, global_batch: int, seq: int = SEQ, vocab: int = VOCAB
) -> list[dict[str, torch.Tensor]]:
    """This DP rank's contiguous share of a fixed random global batch, as train_step takes it.

    The same batch on every call, so repeated steps must lower the loss.
    """
    gen = torch.Generator().manual_seed(1000)
    samples = torch.randint(0, vocab, (global_batch, seq + 1), generator=gen).chunk(dp)[dp_rank]
    return [
        {
            "tokens": mb[:, :-1].contiguous(),
            "labels": mb[:, 1:].contiguous(),
            "loss_mask": torch.ones(mb.shape[0], seq),
            "position_ids": torch.arange(seq).expand(mb.shape[0], seq).contiguous(),
        }
        for mb in samples.split(micro)
    ]
