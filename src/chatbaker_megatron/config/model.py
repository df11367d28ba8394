"""Model architecture config: the `model` Hydra group (conf/model/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field

from chatbaker_megatron.config.checks import Choice, ConfigError, bounded, check_values


class KernelBackend(Choice):
    auto = "auto"
    te = "te"
    flash = "flash"
    apex = "apex"
    cuda = "cuda"
    triton = "triton"
    torch = "torch"


@dataclass
class KernelsConfig:
    """Which implementation runs each fused op (see model/dispatch.py).

    `auto` picks the fastest available backend in the order
    te -> flash -> apex -> cuda -> triton -> torch; naming a backend that is
    not installed is an error at startup, never a silent fallback.
    """

    attention: KernelBackend = KernelBackend.auto
    norm: KernelBackend = KernelBackend.auto


@dataclass
class ModelConfig:
    """A LLaMA-architecture decoder: RMSNorm pre-norm, RoPE, SwiGLU, no biases, untied embeddings.

    The defaults are the tiny model of the CPU demo and tests (conf/model/tiny.yaml):
    every feature of the real models (GQA included) at a size 2 CPU cores train in
    minutes; 4 layers so PP=2 with 2 virtual stages divides evenly.
    """

    name: str = "tiny"
    num_layers: int = bounded(4, ge=1)
    hidden_size: int = bounded(128, ge=1)
    num_attention_heads: int = bounded(4, ge=1)
    # Number of key/value heads (GQA); null means one KV head per query head (MHA).
    num_query_groups: int | None = bounded(2, ge=1)
    ffn_hidden_size: int = bounded(352, ge=1)
    # The tokenizer's vocabulary, stated for the planner (which has no tokenizer);
    # null takes it from the tokenizer. A model is always built for its
    # tokenizer: a stated size that differs is an error (`check_vocab_size`).
    # The embedding is padded to a multiple of make_vocab_size_divisible_by * TP.
    vocab_size: int | None = bounded(None, ge=1)
    make_vocab_size_divisible_by: int = bounded(128, ge=1)
    max_position_embeddings: int = bounded(512, ge=1)
    norm_epsilon: float = bounded(1e-6, gt=0)
    rotary_base: float = bounded(10000.0, gt=1)
    init_method_std: float = bounded(0.02, gt=0)
    kernels: KernelsConfig = field(default_factory=KernelsConfig)

    def validate(self) -> None:
        """Raise ConfigError naming the first impossible key of this group."""
        check_values(self, "model.")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size}: must be divisible by "
                f"model.num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.kv_heads:
            raise ConfigError(
                f"model.num_query_groups={self.num_query_groups}: must divide "
                f"model.num_attention_heads={self.num_attention_heads}"
            )

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
