"""The LLaMA decoder layer as a megatron-core ModuleSpec.

Pre-norm RMSNorm, causal self-attention with RoPE (applied by GPTModel),
SwiGLU MLP, no biases. The norm and core-attention entries are built for the
kernel backends `model/dispatch.py` resolved: megatron's Transformer Engine
modules for `te`, else our `layers.RMSNorm` / `layers.CoreAttention` bound to
the backend, so swapping kernels never touches the layer code.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import (
    TransformerLayer,
    TransformerLayerSubmodules,
)

from chatbaker_megatron.model import dispatch
from chatbaker_megatron.model.layers import CoreAttention, RMSNorm


def norm_spec(backend: str) -> Callable[..., torch.nn.Module]:
    """The norm builder for the layer spec (megatron calls it with config, hidden_size, eps)."""
    dispatch.check_backend("norm", backend)
    if backend == "te":
        from megatron.core.extensions.transformer_engine import TENorm

        return TENorm
    return partial(RMSNorm, backend=backend)


def core_attention_spec(backend: str) -> Callable[..., torch.nn.Module]:
    """The core-attention builder for the layer spec (megatron's DotProductAttention contract)."""
    dispatch.check_backend("attention", backend)
    if backend == "te":
        from megatron.core.extensions.transformer_engine import TEDotProductAttention

        return TEDotProductAttention
    return partial(CoreAttention, backend=backend)


def llama_layer_spec(kernels: dispatch.ResolvedKernels) -> ModuleSpec:
    norm = norm_spec(kernels.norm)
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=norm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=ColumnParallelLinear,
                    core_attention=core_attention_spec(kernels.attention),
                    linear_proj=RowParallelLinear,
                    q_layernorm=IdentityOp,
                    k_layernorm=IdentityOp,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=norm,
            mlp=partial(
                MLP.as_mlp_submodule,
                submodules=MLPSubmodules(
                    linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear
                ),
            ),
            mlp_bda=get_bias_dropout_add,
        ),
    )


def llama_block_spec(
    config: TransformerConfig, kernels: dispatch.ResolvedKernels, vp_stage: int | None
) -> TransformerBlockSubmodules:
    """The layers this pipeline stage (and virtual stage) builds, plus the final norm."""
    layer = llama_layer_spec(kernels)
    return TransformerBlockSubmodules(
        layer_specs=[layer] * get_num_layers_to_build(config, vp_stage=vp_stage),
        layer_norm=norm_spec(kernels.norm),
    )
