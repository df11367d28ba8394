"""Model architecture config: the `model` Hydra group (conf/model/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field

from chatbaker_megatron.config.checks import bounded

KERNEL_BACKENDS = ("auto", "te", "flash", "apex", "cuda", "triton", "torch")


@dataclass
class KernelsConfig:
    """Which implementation runs each fused op (see model/dispatch.py).

    `auto` picks the fastest available backend in the order
    te -> flash -> apex -> cuda -> triton -> torch; naming a backend that is
    not installed is an error at startup, never a silent fallback.
    """

    attention: str = "auto"
    norm: str = "auto"


@dataclass
class ModelConfig:
    """A LLaMA-architecture decoder: RMSNorm pre-norm, RoPE, SwiGLU, no biases, untied embeddings."""

    name: str = "tiny"
    num_layers: int = bounded(4, ge=1)
    hidden_size: int = bounded(128, ge=1)
    num_attention_heads: int = bounded(4, ge=1)
    # Number of key/value heads (GQA); null means one KV head per query head (MHA).
    num_query_groups: int | None = bounded(None, ge=1)
    ffn_hidden_size: int = bounded(352, ge=1)
    # The tokenizer's vocabulary, stated for the planner (which has no tokenizer);
    # null takes it from the tokenizer. A model is always built for its
    # tokenizer: a stated size that differs is an error (`check_vocab_size`).
    # The embedding is padded to a multiple of make_vocab_size_divisible_by * TP.
    vocab_size: int | None = bounded(None, ge=1)
    make_vocab_size_divisible_by: int = bounded(128, ge=1)
    max_position_embeddings: int = bounded(2048, ge=1)
    norm_epsilon: float = bounded(1e-6, gt=0)
    rotary_base: float = bounded(10000.0, gt=1)
    init_method_std: float = bounded(0.02, gt=0)
    kernels: KernelsConfig = field(default_factory=KernelsConfig)

    @property
    def kv_heads(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def check_vocab_size(self, tokenizer_vocab_size: int) -> None:
        """Refuse a stated `vocab_size` that is not the tokenizer's (the tokenizer decides)."""
        if self.vocab_size is not None and self.vocab_size != tokenizer_vocab_size:
            raise ValueError(
                f"model.vocab_size={self.vocab_size} but the tokenizer has "
                f"{tokenizer_vocab_size} tokens: set model.vocab_size={tokenizer_vocab_size}, "
                "or null to take the tokenizer's"
            )
