"""Tensor layouts megatron <-> HF, and the safetensors shard writer / reader (no model needed)."""

from __future__ import annotations

import json

import pytest
import torch

from chatbaker_megatron.config.model import ModelConfig
from chatbaker_megatron.convert import layout
from chatbaker_megatron.convert.safetensors_io import INDEX_FILE, HFWeights, ShardWriter, parse_size

# 6 query heads in 2 groups (3:1 GQA), head dim 2.
MODEL = ModelConfig(
    num_layers=2, hidden_size=12, num_attention_heads=6, num_query_groups=2, ffn_hidden_size=10
)
ARCH = layout.Arch(MODEL, vocab_size=11)
H = MODEL.hidden_size


def fused_qkv_by_hand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """megatron's fused QKV as model/sharding.py documents it: per group [its q heads, k, v]."""
    d, per_group = MODEL.head_dim, MODEL.num_attention_heads // MODEL.kv_heads
    rows = []
    for group in range(MODEL.kv_heads):
        for head in range(group * per_group, (group + 1) * per_group):
            rows.append(q[head * d : (head + 1) * d])
        rows.append(k[group * d : (group + 1) * d])
        rows.append(v[group * d : (group + 1) * d])
    return torch.cat(rows)


def test_qkv_split_follows_query_groups():
    h, d = MODEL.hidden_size, MODEL.head_dim
    q = torch.randn(MODEL.num_attention_heads * d, h)
    k = torch.randn(MODEL.kv_heads * d, h)
    v = torch.randn(MODEL.kv_heads * d, h)
    fused = fused_qkv_by_hand(q, k, v)
    split = layout.split_qkv(fused, ARCH)
    for got, want in zip(split, (q, k, v)):
        assert torch.equal(got, want)
    assert torch.equal(layout.merge_qkv(q, k, v, ARCH), fused)


def test_qkv_shape_errors_name_the_shapes():
    with pytest.raises(layout.LayoutError, match=r"fused QKV weight has shape \(5, 8\)"):
        layout.split_qkv(torch.zeros(5, 8), ARCH)
    with pytest.raises(layout.LayoutError, match="k_proj"):
        q = torch.zeros(12, H)
        layout.merge_qkv(q, torch.zeros(3, H), torch.zeros(4, H), ARCH)


def test_every_tensor_round_trips_and_vocab_padding_is_dropped():
    rows = 16  # padded vocabulary
    megatron = {
        layout.EMBEDDING: torch.randn(rows, H),
        layout.OUTPUT_LAYER: torch.randn(rows, H),
        layout.FINAL_NORM: torch.randn(H),
    }
    for i in range(MODEL.num_layers):
        prefix = f"decoder.layers.{i}."
        megatron[prefix + layout.QKV] = torch.randn(20, H)
        megatron[prefix + "self_attention.linear_proj.weight"] = torch.randn(H, 12)
        megatron[prefix + "input_layernorm.weight"] = torch.randn(H)
        megatron[prefix + "pre_mlp_layernorm.weight"] = torch.randn(H)
        megatron[prefix + layout.FC1] = torch.randn(20, H)
        megatron[prefix + "mlp.linear_fc2.weight"] = torch.randn(H, 10)
    hf = dict(pair for name, t in megatron.items() for pair in layout.to_hf(name, t, ARCH))
    assert sorted(hf) == sorted(layout.hf_names(ARCH))
    assert hf[layout.HF_EMBEDDING].shape == (ARCH.vocab_size, H)
    assert torch.equal(
        hf["model.layers.1.mlp.up_proj.weight"], megatron["decoder.layers.1." + layout.FC1][10:]
    )
    assert torch.equal(
        hf["model.layers.0.post_attention_layernorm.weight"],
        megatron["decoder.layers.0.pre_mlp_layernorm.weight"],
    )
    for name, tensor in megatron.items():
        back = layout.from_hf(name, hf.__getitem__, ARCH, rows)
        if name in (layout.EMBEDDING, layout.OUTPUT_LAYER):
            assert torch.equal(back[: ARCH.vocab_size], tensor[: ARCH.vocab_size])
            assert not back[ARCH.vocab_size :].any(), "padding rows are zeros"
        else:
            assert torch.equal(back, tensor), name


def test_unknown_tensor_names_are_refused():
    with pytest.raises(
        layout.LayoutError, match=r"decoder\.layers\.0\.self_attention\.q_layernorm\.weight"
    ):
        layout.to_hf("decoder.layers.0.self_attention.q_layernorm.weight", torch.zeros(2), ARCH)
    with pytest.raises(layout.LayoutError, match="fewer than the tokenizer's 11"):
        layout.resize_vocab(torch.zeros(10, 8), 16, 11)


def test_shards_stay_under_the_limit_and_read_back(tmp_path):
    tensors = {f"t{i}": torch.full((100,), float(i)) for i in range(5)}  # 400 bytes each
    writer = ShardWriter(tmp_path, parse_size("1000"))
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    names = writer.close()
    assert names == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert all((tmp_path / n).stat().st_size < 1000 + 200 for n in names)  # + header
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert index["metadata"]["total_size"] == 2000
    assert sorted(index["weight_map"]) == sorted(tensors)
    weights = HFWeights(tmp_path)
    for name, tensor in tensors.items():
        assert torch.equal(weights.get(name), tensor)
    with pytest.raises(KeyError, match="t9"):
        weights.get("t9")


def test_size_parsing():
    assert parse_size("2GB") == 2 * 10**9
    assert parse_size("500mb") == 5 * 10**8
    with pytest.raises(ValueError, match="shard size 'big'"):
        parse_size("big")


def test_missing_weights_are_reported(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin: convert them to safetensors"):
        HFWeights(tmp_path)
