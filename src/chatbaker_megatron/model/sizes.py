"""Parameter counts and FLOPs per token of the ChatBaker LLaMA architecture.

Counts follow the layer as built by model/spec.py: per layer a fused QKV
projection (h x (h + 2 * kv_heads * head_dim)), the attention output
projection (h x h), SwiGLU's fused gate+up projection (h x 2f) and down
projection (f x h), two RMSNorm scales (h each), no biases; then a final
RMSNorm and an untied output layer (V x h) next to the input embedding (V x h).

FLOPs (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training
on GPU Clusters Using Megatron-LM", section 5.1; the same convention as PaLM
and llm-foundry, so MFU figures are comparable):
- a matmul with N weights costs 2N FLOPs per token forward and 4N backward
  (gradients of input and of weight): 6N for training;
- attention scores QK^T and the weighted sum AV cost 2 * s * h FLOPs each per
  token and layer forward (counted over the full s x s square, causal masking
  not discounted): 4sh forward, 12sh per layer for training;
- the input embedding is a lookup (no FLOPs); norms, RoPE, SwiGLU's
  elementwise product and softmax are ignored (well under 1%).
So training FLOPs per token = 6 * (L * layer_matmul + V * h) + 12 * L * s * h.
Recompute re-runs forwards: full recompute adds every layer's forward
(2 * layer_matmul + 4sh per layer), selective (core attention) adds the
attention forward (4sh per layer). Those are hardware FLOPs, not model FLOPs:
MFU is always computed from `model_flops_per_token`.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatbaker_megatron.config.model import ModelConfig


@dataclass(frozen=True)
class LayerParams:
    """Parameters of one decoder layer, by weight matrix."""

    qkv: int
    proj: int
    fc1: int  # SwiGLU gate and up projections, fused
    fc2: int
    norms: int  # the two RMSNorm scales

    @property
    def matmul(self) -> int:
        return self.qkv + self.proj + self.fc1 + self.fc2

    @property
    def total(self) -> int:
        return self.matmul + self.norms


def layer_params(model: ModelConfig) -> LayerParams:
    h, f = model.hidden_size, model.ffn_hidden_size
    kv = model.kv_heads * model.head_dim
    return LayerParams(qkv=h * (h + 2 * kv), proj=h * h, fc1=2 * h * f, fc2=f * h, norms=2 * h)


def embedding_params(model: ModelConfig, vocab_size: int) -> int:
    """Weights of one V x h matrix (the input embedding; the untied output layer is the same size)."""
    return vocab_size * model.hidden_size


def param_count(model: ModelConfig, vocab_size: int, *, include_embeddings: bool = True) -> int:
    """All parameters; without embeddings = without the input embedding and the output layer."""
    body = model.num_layers * layer_params(model).total + model.hidden_size  # + final norm
    return body + (2 * embedding_params(model, vocab_size) if include_embeddings else 0)


def param_breakdown(model: ModelConfig, vocab_size: int) -> dict[str, int]:
    """Parameter counts by part, for reports and docs."""
    layer = layer_params(model)
    return {
        "embedding": embedding_params(model, vocab_size),
        "layer.qkv": layer.qkv,
        "layer.proj": layer.proj,
        "layer.fc1": layer.fc1,
        "layer.fc2": layer.fc2,
        "layer.norms": layer.norms,
        "layer": layer.total,
        "layers": model.num_layers * layer.total,
        "final_norm": model.hidden_size,
        "output": embedding_params(model, vocab_size),
        "total": param_count(model, vocab_size),
        "non_embedding": param_count(model, vocab_size, include_embeddings=False),
    }


def attention_flops_per_token(model: ModelConfig, seq_length: int) -> float:
    """Forward FLOPs of QK^T and AV per token, all layers (full s x s, as Narayanan et al.)."""
    return 4.0 * model.num_layers * seq_length * model.hidden_size


def layer_forward_flops_per_token(model: ModelConfig, seq_length: int) -> float:
    """Forward FLOPs of one decoder layer per token: its matmuls plus its attention."""
    return 2.0 * layer_params(model).matmul + 4.0 * seq_length * model.hidden_size


def model_flops_per_token(model: ModelConfig, seq_length: int, vocab_size: int) -> float:
    """Training FLOPs per token without recompute: 6 * N_matmul + 12 * L * s * h.

    `vocab_size` is the number of rows of the output layer: pass the padded
    vocabulary for what the hardware computes. This is the MFU numerator.
    """
    matmul = model.num_layers * layer_params(model).matmul + embedding_params(model, vocab_size)
    return 6.0 * matmul + 3.0 * attention_flops_per_token(model, seq_length)


def recompute_flops_per_token(model: ModelConfig, seq_length: int, recompute: str) -> float:
    """FLOPs per token that recompute adds to a training step (hardware, not model, FLOPs)."""
    if recompute == "full":
        return model.num_layers * layer_forward_flops_per_token(model, seq_length)
    if recompute == "selective":
        return attention_flops_per_token(model, seq_length)
    if recompute == "none":
        return 0.0
    raise ValueError(f"recompute={recompute!r}: expected none, selective or full")


def hardware_flops_per_token(
    model: ModelConfig, seq_length: int, vocab_size: int, recompute: str
) -> float:
    """Training FLOPs per token the GPUs actually execute, recompute included (HFU numerator)."""
    return model_flops_per_token(model, seq_length, vocab_size) + recompute_flops_per_token(
        model, seq_length, recompute
    )
