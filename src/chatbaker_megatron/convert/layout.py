"""Tensor layouts of one LLaMA model in megatron-core and in Hugging Face `LlamaForCausalLM`.

Tensor code only (no model is built, no transformers): names and reshapes.
Megatron names are global and unsharded, as `model/sharding.py` defines them
(`decoder.layers.3.self_attention.linear_qkv.weight`, TP=1 shapes).

The differences between the two layouts:
- QKV is one fused weight in megatron, ordered by query group:
  for each of the `kv_heads` groups, its `heads // kv_heads` query heads,
  then its key head, then its value head (`head_dim` rows each). HF keeps
  q_proj / k_proj / v_proj, with query head i using key/value head
  i // (heads // kv_heads) (transformers' `repeat_kv`), which is the same
  grouping, so no head permutation is needed beyond the de-interleave.
- The SwiGLU fc1 weight is [gate; up] in megatron, gate_proj / up_proj in HF.
- The embedding and output layer are padded to a multiple of
  128 * TP rows in megatron; HF holds exactly the tokenizer's vocabulary.
- RoPE: both rotate the two halves of each head (non-interleaved
  "rotate_half"), so q/k weights need no permutation; the parity tests
  check this against transformers rather than assuming it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from chatbaker_megatron.config.model import ModelConfig
from chatbaker_megatron.model.sharding import EMBEDDING, FINAL_NORM, OUTPUT_LAYER

QKV = "self_attention.linear_qkv.weight"
FC1 = "mlp.linear_fc1.weight"

HF_EMBEDDING = "model.embed_tokens.weight"
HF_FINAL_NORM = "model.norm.weight"
HF_OUTPUT_LAYER = "lm_head.weight"

# Per-layer tensors that map one to one. The `layer_norm_weight` names are
# the same norms when a Transformer Engine spec fuses them into the
# following linear layer.
LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "post_attention_layernorm.weight",
    "mlp.linear_fc2.weight": "mlp.down_proj.weight",
}
QKV_PARTS = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")
FC1_PARTS = ("mlp.gate_proj.weight", "mlp.up_proj.weight")

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Arch:
    """What decides how tensors are split and merged: the model and its tokenizer's vocabulary."""

    model: ModelConfig
    vocab_size: int  # the tokenizer's, without padding

    def __post_init__(self) -> None:
        heads, kv_heads = self.model.num_attention_heads, self.model.kv_heads
        if heads % kv_heads:
            raise ValueError(
                f"{heads} attention heads are not divisible by {kv_heads} key/value heads"
            )
        self.model.check_vocab_size(self.vocab_size)

    @property
    def queries_per_group(self) -> int:
        return self.model.num_attention_heads // self.model.kv_heads


class LayoutError(ValueError):
    """A tensor name or shape that does not fit the LLaMA layout."""


def split_qkv(weight: torch.Tensor, arch: Arch) -> tuple[torch.Tensor, ...]:
    """Megatron's fused QKV [groups * (q + 2) * d, h] -> (q [heads*d, h], k, v [kv*d, h])."""
    groups, q, d = arch.model.kv_heads, arch.queries_per_group, arch.model.head_dim
    h = arch.model.hidden_size
    expected = (groups * (q + 2) * d, h)
    if tuple(weight.shape) != expected:
        raise LayoutError(f"fused QKV weight has shape {tuple(weight.shape)}, expected {expected}")
    grouped = weight.reshape(groups, q + 2, d, h)
    query = grouped[:, :q].reshape(groups * q * d, h)
    key = grouped[:, q].reshape(groups * d, h)
    value = grouped[:, q + 1].reshape(groups * d, h)
    return query.contiguous(), key.contiguous(), value.contiguous()


def merge_qkv(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, arch: Arch
) -> torch.Tensor:
    """The inverse of split_qkv."""
    groups, q, d = arch.model.kv_heads, arch.queries_per_group, arch.model.head_dim
    h = arch.model.hidden_size
    for name, tensor, rows in (
        ("q", query, groups * q * d),
        ("k", key, groups * d),
        ("v", value, groups * d),
    ):
        if tuple(tensor.shape) != (rows, h):
            raise LayoutError(
                f"{name}_proj weight has shape {tuple(tensor.shape)}, expected {(rows, h)}"
            )
    grouped = torch.cat(
        [
            query.reshape(groups, q, d, h),
            key.reshape(groups, 1, d, h),
            value.reshape(groups, 1, d, h),
        ],
        dim=1,
    )
    return grouped.reshape(groups * (q + 2) * d, h)


def split_fc1(weight: torch.Tensor, arch: Arch) -> tuple[torch.Tensor, torch.Tensor]:
    """SwiGLU [gate; up] -> (gate, up)."""
    expected = (2 * arch.model.ffn_hidden_size, arch.model.hidden_size)
    if tuple(weight.shape) != expected:
        raise LayoutError(f"fc1 weight has shape {tuple(weight.shape)}, expected {expected}")
    gate, up = weight.chunk(2, dim=0)
    return gate.contiguous(), up.contiguous()


def resize_vocab(weight: torch.Tensor, rows: int, vocab_size: int) -> torch.Tensor:
    """Keep the first `vocab_size` rows and zero-pad (or cut padding) to `rows` rows.

    Rows past the tokenizer's vocabulary are padding: no token id reaches them.
    """
    if weight.shape[0] < vocab_size:
        raise LayoutError(
            f"vocabulary tensor has {weight.shape[0]} rows, fewer than the tokenizer's "
            f"{vocab_size} tokens"
        )
    out = weight.new_zeros((rows, *weight.shape[1:]))
    out[:vocab_size] = weight[:vocab_size]
    return out


def hf_layer_name(layer: int, suffix: str) -> str:
    return f"model.layers.{layer}.{suffix}"


def to_hf(name: str, tensor: torch.Tensor, arch: Arch) -> list[tuple[str, torch.Tensor]]:
    """HF (name, tensor) pairs for one unsharded megatron tensor."""
    if name == EMBEDDING:
        return [(HF_EMBEDDING, tensor[: arch.vocab_size].contiguous())]
    if name == OUTPUT_LAYER:
        return [(HF_OUTPUT_LAYER, tensor[: arch.vocab_size].contiguous())]
    if name == FINAL_NORM:
        return [(HF_FINAL_NORM, tensor)]
    match = _LAYER.match(name)
    if match:
        layer, suffix = int(match.group(1)), match.group(2)
        if suffix == QKV:
            return [
                (hf_layer_name(layer, p), t) for p, t in zip(QKV_PARTS, split_qkv(tensor, arch))
            ]
        if suffix == FC1:
            return [
                (hf_layer_name(layer, p), t) for p, t in zip(FC1_PARTS, split_fc1(tensor, arch))
            ]
        if suffix in LAYER_RENAMES:
            return [(hf_layer_name(layer, LAYER_RENAMES[suffix]), tensor)]
    raise LayoutError(f"no Hugging Face LLaMA counterpart for megatron tensor {name!r}")


def from_hf(
    name: str, fetch: Callable[[str], torch.Tensor], arch: Arch, vocab_rows: int
) -> torch.Tensor:
    """The unsharded megatron tensor `name`, built from HF tensors read with `fetch(hf_name)`.

    `vocab_rows` is the padded vocabulary of the megatron model.
    """
    if name == EMBEDDING:
        return resize_vocab(fetch(HF_EMBEDDING), vocab_rows, arch.vocab_size)
    if name == OUTPUT_LAYER:
        return resize_vocab(fetch(HF_OUTPUT_LAYER), vocab_rows, arch.vocab_size)
    if name == FINAL_NORM:
        return fetch(HF_FINAL_NORM)
    match = _LAYER.match(name)
    if match:
        layer, suffix = int(match.group(1)), match.group(2)
        if suffix == QKV:
            query, key, value = (fetch(hf_layer_name(layer, p)) for p in QKV_PARTS)
            return merge_qkv(query, key, value, arch)
        if suffix == FC1:
            return torch.cat([fetch(hf_layer_name(layer, p)) for p in FC1_PARTS], dim=0)
        if suffix in LAYER_RENAMES:
            return fetch(hf_layer_name(layer, LAYER_RENAMES[suffix]))
    raise LayoutError(f"no Hugging Face LLaMA counterpart for megatron tensor {name!r}")


def hf_names(arch: Arch) -> list[str]:
    """Every tensor name of the HF checkpoint, in the order export writes them."""
    per_layer = [
        "input_layernorm.weight",
        *QKV_PARTS,
        "self_attn.o_proj.weight",
        "post_attention_layernorm.weight",
        *FC1_PARTS,
        "mlp.down_proj.weight",
    ]
    layers = [hf_layer_name(i, s) for i in range(arch.model.num_layers) for s in per_layer]
    return [HF_EMBEDDING, *layers, HF_FINAL_NORM, HF_OUTPUT_LAYER]
