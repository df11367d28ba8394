"""ModelConfig <-> Hugging Face LlamaConfig (config.json, generation_config.json).

transformers is imported inside the functions that need it: it is an
optional dependency (`pip install chatbaker_megatron[hf]`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chatbaker_megatron.config.model import ModelConfig
from chatbaker_megatron.data.tokenizer.load import ChatBakerTokenizer

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
EXPLICIT_KEYS = (
    "architectures",
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_parameters",
    "attention_bias",
    "mlp_bias",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "dtype",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)


def llama_config_dict(
    model: ModelConfig, tokenizer: ChatBakerTokenizer, dtype: torch.dtype
) -> dict[str, Any]:
    """config.json of the exported LlamaForCausalLM."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=model.hidden_size,
        intermediate_size=model.ffn_hidden_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_attention_heads,
        num_key_value_heads=model.kv_heads,
        head_dim=model.head_dim,
        hidden_act="silu",
        max_position_embeddings=model.max_position_embeddings,
        rms_norm_eps=model.norm_epsilon,
        # transformers 5 takes the legacy rope_theta through **kwargs, which its
        # dataclass signature does not show (4.x: a named argument).
        rope_theta=float(model.rotary_base),  # type: ignore[call-arg]
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
        architectures=["LlamaForCausalLM"],
        dtype=dtype_name(dtype),
    )
    # The non-default settings, plus every architecture key spelled out (a
    # reader with other defaults must not guess them).
    full = config.to_dict()
    data = config.to_diff_dict() | {key: full[key] for key in EXPLICIT_KEYS}
    # transformers 5 keeps the base in `rope_parameters`; 4.x reads only the
    # top-level `rope_theta`, so both are written and a 4.x reader gets it right.
    data["rope_theta"] = float(model.rotary_base)
    return data


def generation_config_dict(tokenizer: ChatBakerTokenizer) -> dict[str, Any]:
    return {
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Deterministic JSON (sorted keys), so the same model always gives the same bytes."""
    path.write_text(
        json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def _require(ok: bool, path: Path, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"{path}: {key}={value!r}: {expected}")


@dataclass(frozen=True)
class HFModelSpec:
    """What a Hugging Face LLaMA config.json says about the weights."""

    model: ModelConfig
    vocab_size: int  # rows of embed_tokens / lm_head
    tie_word_embeddings: bool


def model_config_from_hf(hf_dir: Path, name: str) -> HFModelSpec:
    """The ModelConfig of a Hugging Face LLaMA folder; rejects what our model cannot hold."""
    from transformers import LlamaConfig

    path = hf_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json (not a Hugging Face model folder)")
    raw = json.loads(path.read_text(encoding="utf-8"))
    _require(
        raw.get("model_type") == "llama",
        path,
        "model_type",
        raw.get("model_type"),
        "expected 'llama'",
    )
    config = LlamaConfig.from_pretrained(str(hf_dir))
    _require(
        config.hidden_act == "silu",
        path,
        "hidden_act",
        config.hidden_act,
        "expected 'silu' (SwiGLU)",
    )
    _require(
        not config.attention_bias, path, "attention_bias", config.attention_bias, "expected false"
    )
    _require(not config.mlp_bias, path, "mlp_bias", config.mlp_bias, "expected false")
    rope = dict(config.rope_parameters or {})
    _require(
        rope.get("rope_type", "default") == "default",
        path,
        "rope_parameters.rope_type",
        rope.get("rope_type"),
        "expected 'default' (RoPE scaling is not supported)",
    )
    heads, hidden = config.num_attention_heads, config.hidden_size
    _require(
        config.head_dim == hidden // heads,
        path,
        "head_dim",
        config.head_dim,
        f"expected hidden_size / num_attention_heads = {hidden // heads}",
    )
    kv_heads = config.num_key_value_heads or heads
    model = ModelConfig(
        name=name,
        num_layers=config.num_hidden_layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_query_groups=None if kv_heads == heads else kv_heads,
        ffn_hidden_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        norm_epsilon=config.rms_norm_eps,
        rotary_base=float(rope.get("rope_theta", 10000.0)),
    )
    return HFModelSpec(model, config.vocab_size, bool(config.tie_word_embeddings))
