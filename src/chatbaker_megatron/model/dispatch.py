"""Kernel dispatch: the one place that decides which implementation runs each fused op.

The model's spec asks this module for the RMSNorm function and the core
attention function of a named backend (config `model.kernels.norm` /
`model.kernels.attention`). `auto` resolves to the most preferred available
backend; naming an unavailable backend raises `KernelBackendError` at startup.

Functional contracts (every backend implements exactly these):

- norm:      fn(x[..., H], weight[H], eps) -> y[..., H]  (dtype of x)
- attention: fn(q, k, v, *, softmax_scale, cu_seqlens=None, max_seqlen=None) -> out
    dense:  q [b, s, hq, d], k/v [b, s, hkv, d], causal
    varlen: q [t, hq, d], k/v [t, hkv, d], cu_seqlens int32 [n+1], causal
            within each sequence, no attention across sequence boundaries.
  hq must be a multiple of hkv (GQA).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from chatbaker_megatron.config.model import KernelsConfig

log = logging.getLogger(__name__)

NormFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
AttentionFn = Callable[..., torch.Tensor]


class KernelBackendError(ValueError):
    """A configured kernel backend is unknown or not available on this machine."""


def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Reference RMSNorm: fp32 statistics, output in the input dtype."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.float()).to(x.dtype)


def _block_diagonal_causal_mask(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Boolean [t, t] mask, True where attention is allowed."""
    seq_id = torch.repeat_interleave(
        torch.arange(cu_seqlens.numel() - 1, device=cu_seqlens.device),
        (cu_seqlens[1:] - cu_seqlens[:-1]).long(),
        output_size=total,
    )
    pos = torch.arange(total, device=cu_seqlens.device)
    same_seq = seq_id[:, None] == seq_id[None, :]
    return same_seq & (pos[:, None] >= pos[None, :])


def torch_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    softmax_scale: float,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
) -> torch.Tensor:
    """Reference causal attention on `scaled_dot_product_attention`.

    Varlen input uses a block-diagonal causal mask (memory O(t^2): fine for the
    reference path, which is what CPUs and tests run).
    """
    groups = q.shape[-2] // k.shape[-2]
    if cu_seqlens is None:
        # [b, s, h, d] -> [b, h, s, d]
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(
            qh, kh, vh, is_causal=True, scale=softmax_scale, enable_gqa=groups > 1
        )
        return out.transpose(1, 2)
    mask = _block_diagonal_causal_mask(cu_seqlens, q.shape[0])
    # [t, h, d] -> [1, h, t, d]
    qh, kh, vh = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
    out = F.scaled_dot_product_attention(
        qh, kh, vh, attn_mask=mask, scale=softmax_scale, enable_gqa=groups > 1
    )
    return out.squeeze(0).transpose(0, 1)


# backend -> (is_available, function). Order is the `auto` preference order.
NORM_BACKENDS: dict[str, tuple[Callable[[], bool], NormFn]] = {
    "torch": (lambda: True, torch_rms_norm),
}
ATTENTION_BACKENDS: dict[str, tuple[Callable[[], bool], AttentionFn]] = {
    "torch": (lambda: True, torch_attention),
}


@dataclass(frozen=True)
class ResolvedKernels:
    attention: str
    norm: str


def _resolve(op: str, requested: str, table: dict) -> str:
    if requested == "auto":
        return next(name for name, (available, _fn) in table.items() if available())
    if requested not in table:
        raise KernelBackendError(
            f"model.kernels.{op}={requested!r}: unknown backend; expected auto or one of {sorted(table)}"
        )
    if not table[requested][0]():
        raise KernelBackendError(
            f"model.kernels.{op}={requested!r}: that backend is not available on this machine"
        )
    return requested


def resolve_kernels(cfg: KernelsConfig) -> ResolvedKernels:
    """Validate the configured backends and pick concrete ones for `auto`."""
    resolved = ResolvedKernels(
        attention=_resolve("attention", cfg.attention, ATTENTION_BACKENDS),
        norm=_resolve("norm", cfg.norm, NORM_BACKENDS),
    )
    log.info("kernels: attention=%s norm=%s", resolved.attention, resolved.norm)
    return resolved


def norm_fn(backend: str) -> NormFn:
    return NORM_BACKENDS[backend][1]


def attention_fn(backend: str) -> AttentionFn:
    return ATTENTION_BACKENDS[backend][1]


def norm_spec(backend: str) -> Callable[..., torch.nn.Module]:
    """The norm builder for the layer spec (megatron calls it with config, hidden_size, eps)."""
    from chatbaker_megatron.model.layers import RMSNorm

    return functools.partial(RMSNorm, backend=backend)


def core_attention_spec(backend: str) -> Callable[..., torch.nn.Module]:
    """The core-attention builder for the layer spec (megatron's DotProductAttention contract)."""
    from chatbaker_megatron.model.layers import CoreAttention

    return functools.partial(CoreAttention, backend=backend)
