"""Kernel dispatch: the registry of which implementation runs each fused op.

`resolve_kernels` turns the config (`model.kernels.norm` /
`model.kernels.attention`) into concrete backend names; `norm_fn` /
`attention_fn` hand out a backend's function. The layer spec that uses them
is model/spec.py. `auto` resolves to the most preferred available backend,
in the order

    te -> flash (attention) -> apex (norm) -> cuda (norm) -> triton -> torch

and is always `torch` on a machine without CUDA (the Triton interpreter and
other CPU fallbacks are for tests, not speed). Naming a backend that is
unknown for the op or not available here raises `KernelBackendError` at
startup with what it needs; there is no silent fallback.

Functional contracts (every backend except `te` implements exactly these;
`te` runs as megatron's own Transformer Engine modules, see model/spec.py):

- norm:      fn(x[..., H], weight[H], eps) -> y[..., H]  (dtype of x)
- attention: fn(q, k, v, *, softmax_scale, cu_seqlens=None, max_seqlen=None) -> out
    dense:  q [b, s, hq, d], k/v [b, s, hkv, d], causal
    varlen: q [t, hq, d], k/v [t, hkv, d], cu_seqlens int32 [n+1] with
            cu_seqlens[-1] == t, causal within each sequence, no attention
            across sequence boundaries.
  hq must be a multiple of hkv (GQA).

Availability is decided once per process, on CUDA only: a backend's library
must import (an installed Transformer Engine or flash-attn whose CUDA
libraries do not load counts as absent, with a warning naming the error),
and the run's dtype must be one the backend takes (flash-attn: fp16/bf16).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from chatbaker_megatron import platform
from chatbaker_megatron.config.model import KernelBackend, KernelsConfig

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
    reference path, which is what CPUs and tests run). Dense input may have
    more keys than queries (decoding with a KV cache): query i then sits at
    position sk - sq + i, so the causal mask is aligned to the end.
    """
    groups = q.shape[-2] // k.shape[-2]
    if cu_seqlens is None:
        sq, sk = q.shape[1], k.shape[1]
        causal = {"is_causal": True} if sq == sk else {"attn_mask": causal_lower_right(sq, sk)}
        # [b, s, h, d] -> [b, h, s, d]
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(
            qh, kh, vh, scale=softmax_scale, enable_gqa=groups > 1, **causal
        )
        return out.transpose(1, 2)
    mask = _block_diagonal_causal_mask(cu_seqlens, q.shape[0])
    # [t, h, d] -> [1, h, t, d]
    qh, kh, vh = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
    out = F.scaled_dot_product_attention(
        qh, kh, vh, attn_mask=mask, scale=softmax_scale, enable_gqa=groups > 1
    )
    return out.squeeze(0).transpose(0, 1)


# ---- loaders: import a backend's library the first time its op is asked for ----


@functools.cache
def _torch_norm() -> NormFn:
    return torch_rms_norm


@functools.cache
def _triton_norm() -> NormFn:
    from chatbaker_kernels.triton_rmsnorm import rms_norm

    return rms_norm


@functools.cache
def _cuda_norm() -> NormFn:
    from chatbaker_kernels.cuda_rmsnorm import rms_norm

    return rms_norm


@functools.cache
def _apex_norm() -> NormFn:
    from apex.normalization.fused_layer_norm import (
        fused_rms_norm_affine,
        mixed_dtype_fused_rms_norm_affine,
    )

    def apex_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        if weight.dtype == x.dtype:
            return fused_rms_norm_affine(x, weight, weight.shape, eps)
        # apex's mixed-dtype kernel returns the weight's dtype; the contract is x's.
        return mixed_dtype_fused_rms_norm_affine(x, weight, weight.shape, eps).to(x.dtype)

    return apex_rms_norm


@functools.cache
def _torch_attention() -> AttentionFn:
    return torch_attention


@functools.cache
def _triton_attention() -> AttentionFn:
    from chatbaker_kernels.triton_attention import flash_attention

    return flash_attention


@functools.cache
def _flash_attention() -> AttentionFn:
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    def flash_attention(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        softmax_scale: float,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
    ) -> torch.Tensor:
        if cu_seqlens is None:
            return flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=True)
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item())
        return flash_attn_varlen_func(
            q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
            softmax_scale=softmax_scale, causal=True,
        )  # fmt: skip

    return flash_attention


# ---- availability: cheap checks, nothing imported ----


@functools.cache
def _installed(module: str) -> bool:
    """Whether `module` imports here. Imported, not only looked up: a GPU image's
    Transformer Engine or flash-attn built against another CUDA or torch is found
    by `find_spec` and then fails inside megatron's first layer."""
    if importlib.util.find_spec(module) is None:
        return False
    try:
        importlib.import_module(module)
    except Exception as error:  # a broken build raises ImportError, OSError, RuntimeError...
        log.warning(
            "%s is installed but does not import (%s: %s); its kernels are not used",
            module, type(error).__name__, error,
        )  # fmt: skip
        return False
    return True


def _cuda() -> bool:
    return platform.detect().is_cuda


def _triton_runs_here() -> bool:
    # Off the GPU, Triton kernels run only in its interpreter, which reads
    # TRITON_INTERPRET once, when triton is first imported.
    return _installed("triton") and (_cuda() or os.environ.get("TRITON_INTERPRET") == "1")


def _cuda_extension_built() -> bool:
    from chatbaker_kernels import cuda_rmsnorm

    return cuda_rmsnorm.is_available()


@dataclass(frozen=True)
class Backend:
    """One implementation of an op: whether it runs here, what it needs, how to get it."""

    available: Callable[[], bool]
    requires: str  # what `available` checks, for the error message
    # The functional op; None for `te`, which runs as megatron's TE modules.
    load: Callable[[], Callable[..., torch.Tensor]] | None
    # The dtypes it computes in; None: any.
    dtypes: tuple[torch.dtype, ...] | None = None

    def takes(self, dtype: torch.dtype) -> bool:
        return self.dtypes is None or dtype in self.dtypes


_TE = Backend(
    lambda: _cuda() and _installed("transformer_engine"),
    "CUDA and transformer_engine (pip install transformer-engine[pytorch])",
    None,
)
_TRITON_NEEDS = (
    "triton and CUDA (on CPU: TRITON_INTERPRET=1 set before triton is imported; slow, for tests)"
)

# Order is the `auto` preference order.
NORM_BACKENDS: dict[str, Backend] = {
    "te": _TE,
    "apex": Backend(
        lambda: _cuda() and _installed("apex") and _installed("fused_layer_norm_cuda"),
        "CUDA and apex built with its CUDA extensions (fused_layer_norm_cuda)",
        _apex_norm,
    ),
    "cuda": Backend(
        lambda: _cuda() and _cuda_extension_built(),
        "CUDA and the chatbaker_kernels._cuda_rmsnorm extension (built by setup.py on a CUDA machine)",
        _cuda_norm,
    ),
    "triton": Backend(_triton_runs_here, _TRITON_NEEDS, _triton_norm),
    "torch": Backend(lambda: True, "nothing", _torch_norm),
}
ATTENTION_BACKENDS: dict[str, Backend] = {
    "te": _TE,
    "flash": Backend(
        lambda: _cuda() and _installed("flash_attn"),
        "CUDA and flash-attn 2 (pip install flash-attn); fp16/bf16 inputs only",
        _flash_attention,
        dtypes=(torch.float16, torch.bfloat16),
    ),
    "triton": Backend(_triton_runs_here, _TRITON_NEEDS, _triton_attention),
    "torch": Backend(lambda: True, "nothing", _torch_attention),
}
_TABLES = {"norm": NORM_BACKENDS, "attention": ATTENTION_BACKENDS}


@dataclass(frozen=True)
class ResolvedKernels:
    attention: str
    norm: str


def _backend(op: str, name: str) -> Backend:
    table = _TABLES[op]
    if name not in table:
        raise KernelBackendError(
            f"model.kernels.{op}={name!r}: no such {op} backend; expected auto or one of {list(table)}"
        )
    return table[name]


def _resolve(op: str, requested: str, dtype: torch.dtype) -> str:
    if requested == "auto":
        if not _cuda():
            return "torch"
        return next(
            name
            for name, backend in _TABLES[op].items()
            if backend.takes(dtype) and backend.available()
        )
    backend = _backend(op, requested)
    if not backend.available():
        raise KernelBackendError(
            f"model.kernels.{op}={requested!r} is not available on this machine: "
            f"it needs {backend.requires}"
        )
    if not backend.takes(dtype):
        raise KernelBackendError(
            f"model.kernels.{op}={requested!r} does not compute in {dtype} (this run's "
            f"cluster.precision); it takes {', '.join(map(str, backend.dtypes or ()))}"
        )
    return requested


def resolve_kernels(cfg: KernelsConfig, dtype: torch.dtype = torch.float32) -> ResolvedKernels:
    """Validate the configured backends and pick concrete ones for `auto`, for a model
    computing in `dtype`."""
    resolved = ResolvedKernels(
        attention=_resolve("attention", cfg.attention, dtype),
        norm=_resolve("norm", cfg.norm, dtype),
    )
    log.info(
        "kernels: attention=%s (configured %s), norm=%s (configured %s), %s",
        resolved.attention, cfg.attention, resolved.norm, cfg.norm, dtype,
    )  # fmt: skip
    return resolved


def fused_ops() -> dict[str, bool]:
    """megatron's fused elementwise ops and wgrad accumulation, where they run.

    On CUDA: the bias+SwiGLU fusion (TorchScript); the RoPE fusion, which is
    Transformer Engine's kernel; gradient accumulation fusion (the wgrad GEMM
    adds into the fp32 main grad), which megatron's local linear layers (the
    ones this model uses) take from apex's fused_weight_gradient_mlp_cuda.
    Off on CPU: the jit compile costs more than it saves, and plain ops keep
    the CPU and reference numerics identical.
    """
    cuda = _cuda()
    return {
        "bias_activation_fusion": cuda,
        "apply_rope_fusion": cuda and _installed("transformer_engine"),
        "gradient_accumulation_fusion": cuda and _installed("fused_weight_gradient_mlp_cuda"),
    }


def check_backend(op: str, backend: str) -> None:
    """Raise KernelBackendError unless `backend` is a known `op` ("norm" or "attention") backend."""
    _backend(op, backend)


def _load(op: str, backend: str) -> Callable[..., torch.Tensor]:
    entry = _backend(op, backend)
    if entry.load is None:
        raise KernelBackendError(
            f"the {backend!r} {op} backend runs as megatron's Transformer Engine module, "
            "not as a function: build the layer from model/spec.py"
        )
    return entry.load()


def kv_cache_kernels(dtype: torch.dtype) -> KernelsConfig:
    """Kernels for decoding with a KV cache (more keys than queries after the first pass).

    Attention must align the causal mask to the end of the keys: flash-attn
    and the torch backend do; megatron hands Transformer Engine `no_mask`
    once the cache is in use (a multi-token continuation would attend to
    its own future), and the Triton kernel assumes equal lengths. flash-attn
    takes only fp16/bf16.
    """
    flash = ATTENTION_BACKENDS["flash"]
    usable = flash.takes(dtype) and flash.available()
    attention = KernelBackend.flash if usable else KernelBackend.torch
    return KernelsConfig(attention=attention, norm=KernelBackend.auto)


def norm_fn(backend: str) -> NormFn:
    return _load("norm", backend)


def attention_fn(backend: str) -> AttentionFn:
    return _load("attention", backend)
