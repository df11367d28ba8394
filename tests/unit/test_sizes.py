"""Parameter counts and FLOPs per token (model/sizes.py) against known sizes and formulas."""

from __future__ import annotations

import pytest

from chatbaker_megatron.config.model import ModelConfig
from chatbaker_megatron.model import sizes

# MHA (num_query_groups=None): ModelConfig's defaults are the tiny model's, with GQA.
CHATBAKER_1_3B = ModelConfig(
    name="1.3b",
    num_layers=24,
    hidden_size=2048,
    num_attention_heads=32,
    num_query_groups=None,
    ffn_hidden_size=5632,
)
CHATBAKER_7B = ModelConfig(
    name="7b",
    num_layers=32,
    hidden_size=4096,
    num_attention_heads=32,
    num_query_groups=None,
    ffn_hidden_size=11008,
)
VOCAB = 50304


def test_released_1_3b_size():
    # The released 42dot/ChatBaker 1.3B PLM (untied embeddings): 1.44B parameters.
    assert sizes.param_count(CHATBAKER_1_3B, VOCAB) == 1_439_270_912
    assert sizes.param_count(CHATBAKER_1_3B, VOCAB, include_embeddings=False) == 1_233_225_728


def test_7b_size_and_llama_7b():
    assert sizes.param_count(CHATBAKER_7B, VOCAB) == 6_888_361_984
    # The same shape with LLaMA's 32,000-token vocabulary is LLaMA-7B: 6,738,415,616.
    assert sizes.param_count(CHATBAKER_7B, 32000) == 6_738_415_616


def test_breakdown_adds_up():
    parts = sizes.param_breakdown(CHATBAKER_1_3B, VOCAB)
    layer = sum(parts[f"layer.{k}"] for k in ("qkv", "proj", "fc1", "fc2", "norms"))
    assert layer == parts["layer"]
    assert (
        parts["embedding"] + parts["layers"] + parts["final_norm"] + parts["output"]
        == parts["total"]
    )
    assert parts["total"] - parts["embedding"] - parts["output"] == parts["non_embedding"]


def test_gqa_shrinks_only_the_kv_projection():
    gqa = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2)
    mha = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=None)
    assert sizes.layer_params(mha).qkv == 64 * 3 * 64
    assert sizes.layer_params(gqa).qkv == 64 * (64 + 2 * 32)
    assert sizes.layer_params(gqa).fc1 == sizes.layer_params(mha).fc1


def test_matches_hugging_face_llama():
    """The 1.3B shape as transformers' LlamaForCausalLM counts it (built on the meta device)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = CHATBAKER_1_3B
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=model.hidden_size,
        intermediate_size=model.ffn_hidden_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_attention_heads,
        num_key_value_heads=model.kv_heads,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(config)
    assert sizes.param_count(model, VOCAB) == sum(p.numel() for p in hf.parameters())


def gpt_shaped(layers: int, hidden: int) -> ModelConfig:
    """A LLaMA layer with f = 8h/3 has GPT's 12h^2 matmul weights per layer."""
    return ModelConfig(
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=hidden // 64,
        num_query_groups=None,
        ffn_hidden_size=8 * hidden // 3,
    )


@pytest.mark.parametrize("recompute", ["none", "full"])
def test_flops_match_narayanan_closed_form(recompute):
    """Narayanan et al. 2021 eq. (3): 72 B s L h^2 (1 + s/6h + V/12hL) per batch, 96 (..., V/16hL) with full recompute."""
    layers, h, s, vocab = 24, 1536, 2048, 51200
    model = gpt_shaped(layers, h)
    assert sizes.layer_params(model).matmul == 12 * h * h
    if recompute == "none":
        expected = 72 * layers * h * h * (1 + s / (6 * h) + vocab / (12 * h * layers))
        got = sizes.model_flops_per_token(model, s, vocab)
    else:
        expected = 96 * layers * h * h * (1 + s / (6 * h) + vocab / (16 * h * layers))
        got = sizes.hardware_flops_per_token(model, s, vocab, "full")
    assert got == pytest.approx(expected, rel=1e-12)


def test_flops_per_token_of_the_presets():
    # 6 * N_matmul + 12 L s h: the MFU numerator the trainer uses.
    n_matmul = 24 * sizes.layer_params(CHATBAKER_1_3B).matmul + VOCAB * 2048
    assert sizes.model_flops_per_token(CHATBAKER_1_3B, 4096, VOCAB) == (
        6 * n_matmul + 12 * 24 * 4096 * 2048
    )
    assert sizes.model_flops_per_token(CHATBAKER_7B, 2048, VOCAB) / 1e9 == pytest.approx(
        6 * (32 * 202_375_168 + VOCAB * 4096) / 1e9 + 12 * 32 * 2048 * 4096 / 1e9
    )


def test_selective_recompute_adds_attention_forward():
    extra = sizes.hardware_flops_per_token(
        CHATBAKER_7B, 2048, VOCAB, "selective"
    ) - sizes.model_flops_per_token(CHATBAKER_7B, 2048, VOCAB)
    assert extra == 4 * 32 * 2048 * 4096
    with pytest.raises(ValueError, match="recompute"):
        sizes.recompute_flops_per_token(CHATBAKER_7B, 2048, "some")
