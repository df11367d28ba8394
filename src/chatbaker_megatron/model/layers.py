"""The model's own spec entries: RMSNorm and core attention on a chosen kernel backend.

Both are drop-in megatron-core submodules (same constructor and forward
contracts as megatron's norm builders and DotProductAttention); the actual
math runs in the function `model/dispatch.py` picks for the backend.
"""

from __future__ import annotations

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from chatbaker_megatron.model import dispatch


class RMSNorm(torch.nn.Module):
    """RMSNorm with a learnable scale, sequence-parallel aware.

    Under sequence parallelism each TP rank normalises its own slice of the
    sequence, so the weight's gradient is partial per rank: the
    `sequence_parallel` attribute tells megatron's finalize_model_grads to
    all-reduce it over the TP group.
    """

    def __init__(
        self,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-6,
        backend: str = "torch",
    ) -> None:
        super().__init__()
        self.eps = eps
        self.norm = dispatch.norm_fn(backend)
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        # megatron reads this flag off a parameter: all-reduce its grad over TP.
        self.weight.sequence_parallel = config.sequence_parallel  # type: ignore[attr-defined]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x, self.weight, self.eps)


class CoreAttention(MegatronModule):
    """Causal softmax(QK^T)V for megatron's SelfAttention, dense or packed (thd).

    megatron hands queries as [s, b, heads, dim] (dense) or [t, heads, dim]
    (packed sequences, with `packed_seq_params.cu_seqlens_q`), already
    split over TP; GQA key/value heads are not repeated here, the backend
    handles them.
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: object | None = None,
        backend: str = "torch",
    ) -> None:
        super().__init__(config=config)
        if attn_mask_type not in (AttnMaskType.causal, AttnMaskType.padding_causal):
            raise ValueError(f"CoreAttention is causal-only; got attn_mask_type={attn_mask_type}")
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        if dropout:
            raise ValueError(
                f"attention dropout {dropout} is not supported by the fused kernels; "
                "LLaMA pretraining uses 0"
            )
        head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else head_dim**-0.5
        self.attention = dispatch.attention_fn(backend)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: PackedSeqParams | None = None,
    ) -> torch.Tensor:
        if attention_bias is not None:
            raise ValueError("CoreAttention does not take an attention bias")
        if packed_seq_params is not None:
            # [t, heads, dim] -> [t, heads * dim]
            out = self.attention(
                query,
                key,
                value,
                softmax_scale=self.softmax_scale,
                cu_seqlens=packed_seq_params.cu_seqlens_q,
                max_seqlen=packed_seq_params.max_seqlen_q,
            )
            return out.reshape(out.shape[0], -1)
        # [s, b, heads, dim] -> [b, s, heads, dim] and back to [s, b, heads * dim]
        out = self.attention(
            query.transpose(0, 1),
            key.transpose(0, 1),
            value.transpose(0, 1),
            softmax_scale=self.softmax_scale,
        )
        return out.transpose(0, 1).reshape(query.shape[0], query.shape[1], -1)
