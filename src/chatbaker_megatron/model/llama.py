"""Build the ChatBaker LLaMA model on megatron-core's GPTModel.

One `GPTModel` per virtual pipeline stage ("model chunk") of this rank.
Weights are initialised on CPU from the global seed (megatron's
use_cpu_initialization): the full matrix is drawn, then this TP rank's
slice kept, so a TP=2 run starts from exactly the TP=1 weights.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from chatbaker_megatron import platform
from chatbaker_megatron.config.model import ModelConfig
from chatbaker_megatron.config.parallel import ParallelConfig
from chatbaker_megatron.model import dispatch
from chatbaker_megatron.model.spec import llama_block_spec

# cluster.precision -> the dtype the model is built in (`params_dtype` below).
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Pad the vocabulary so every TP shard of the embedding is a multiple of `divisible_by`."""
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple


def transformer_config(
    model: ModelConfig, parallel: ParallelConfig, *, params_dtype: torch.dtype = torch.float32
) -> TransformerConfig:
    """megatron-core's TransformerConfig for a LLaMA layer stack under `parallel`.

    `params_dtype` is the one place the model's dtype is decided: weights are
    stored in it, activations cross pipeline stages in it, and megatron's
    bf16/fp16 flags (Float16Module, the mixed-precision optimizer) follow it.
    """
    # TransformerConfig's keywords for each parallel.recompute.
    recompute: dict[str, dict[str, Any]] = {
        "none": {},
        "selective": {"recompute_granularity": "selective", "recompute_modules": ["core_attn"]},
        "full": {
            "recompute_granularity": "full",
            "recompute_method": "uniform",
            "recompute_num_layers": parallel.recompute_num_layers,
        },
    }
    # One dict, updated by the machine's settings: megatron's defaults here, then
    # the fused ops (model/dispatch.py) and the platform's rules, without a
    # keyword given twice.
    settings = dict(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.kv_heads,
        ffn_hidden_size=model.ffn_hidden_size,
        kv_channels=model.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=model.init_method_std,
        tensor_model_parallel_size=parallel.tp,
        sequence_parallel=parallel.sp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.vpp,
        context_parallel_size=parallel.cp,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        use_cpu_initialization=True,
        # Dropout is off and the norm is ours: these fusions have nothing to fuse.
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        deallocate_pipeline_outputs=True,
        **recompute[parallel.recompute],
    )
    settings.update(dispatch.fused_ops())
    settings.update(platform.megatron_config_overrides())
    return TransformerConfig(**settings)


def build_model(
    model: ModelConfig,
    parallel: ParallelConfig,
    *,
    vocab_size: int,
    max_sequence_length: int,
    params_dtype: torch.dtype = torch.float32,
    kernels: dispatch.ResolvedKernels | None = None,
) -> list[GPTModel]:
    """This rank's model chunks (one per virtual pipeline stage; one without VPP).

    `vocab_size` is the tokenizer's (`model.vocab_size`, when set, must agree);
    the embedding is padded per ModelConfig. Needs megatron's parallel_state
    initialised (see chatbaker_megatron.parallel).
    """
    model.check_vocab_size(vocab_size)
    kernels = kernels or dispatch.resolve_kernels(model.kernels, params_dtype)
    config = transformer_config(model, parallel, params_dtype=params_dtype)
    padded = padded_vocab_size(vocab_size, model.make_vocab_size_divisible_by, parallel.tp)
    chunks = []
    for vp_stage in range(parallel.vpp or 1):
        stage = vp_stage if parallel.vpp else None
        chunks.append(
            GPTModel(
                config=config,
                transformer_layer_spec=llama_block_spec(config, kernels, stage),
                vocab_size=padded,
                max_sequence_length=max_sequence_length,
                pre_process=parallel_state.is_pipeline_first_stage(
                    ignore_virtual=False, vp_stage=stage
                ),
                post_process=parallel_state.is_pipeline_last_stage(
                    ignore_virtual=False, vp_stage=stage
                ),
                parallel_output=True,
                share_embeddings_and_output_weights=False,
                position_embedding_type="rope",
                rotary_base=int(model.rotary_base),
                vp_stage=stage,
            )
        )
    return chunks
