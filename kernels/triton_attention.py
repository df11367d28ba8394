"""Causal flash attention in Triton: forward and backward, dense or varlen, with GQA.

The S x S score matrix never exists in memory. The forward pass walks the key
blocks of one query block with an online softmax (running max m, running sum
l, output rescaled whenever the max grows) and stores only the output and the
row log-sum-exp; the backward pass recomputes the probabilities tile by tile
from that log-sum-exp.

Layout. Tokens of every sequence are packed back to back: [tokens, heads, dim].
A dense batch [b, s, h, d] is the same thing with b sequences of length s, so
one set of kernels serves both; varlen input gives sequence boundaries in
`cu_seqlens` ([n + 1] int32 offsets). A program only ever reads keys of its own
sequence, so nothing attends across documents.

GQA. Query head h reads key/value head h // (hq / hkv), as in
`scaled_dot_product_attention(enable_gqa=True)`. The dk/dv kernel gives each
program one key/value head and loops over the query heads that share it, so
the group's gradients are summed in registers without atomics.

Backward (per head, P = softmax(scale * Q K^T) with the causal mask):
    dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),
    dQ = scale * dS K,  dK = scale * dS^T Q
split in two kernels (dk/dv by key block, dq by query block) so that every
output tile is owned by one program.

Exponentials are base 2 (exp2 is a single instruction): scores are scaled by
softmax_scale * log2(e) and the stored log-sum-exp is in log2 units.

Numerics: tiles are multiplied in the input dtype with fp32 accumulation
(fp64 for float64 inputs, which exist for gradcheck); fp32 inputs use IEEE
fp32 products (not TF32), like PyTorch's default matmul.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from chatbaker_kernels._common import acc_dtype, acc_torch_dtype, triton_interpreting

LOG2_E = 1.4426950408889634
MAX_HEAD_DIM = 256


@dataclass(frozen=True)
class Tiles:
    """Launch shape of one kernel.

    `outer` is the token block a program owns (queries in the forward and dq
    kernels, keys in the dk/dv kernel), `inner` the token block it steps
    through in its loop. The causal loop is split at an outer-block boundary,
    so outer must be a multiple of inner.
    """

    outer: int
    inner: int
    num_warps: int
    num_stages: int

    def __post_init__(self) -> None:
        for tile in (self.outer, self.inner):
            if tile < 16 or tile & (tile - 1):
                raise ValueError(f"tile sizes must be powers of two >= 16, got {tile}")
        if self.outer % self.inner:
            raise ValueError(
                f"outer tile {self.outer} is not a multiple of inner tile {self.inner}"
            )


@dataclass(frozen=True)
class AttentionConfig:
    fwd: Tiles  # outer = query block, inner = key block
    dkdv: Tiles  # outer = key block, inner = query block
    dq: Tiles  # outer = query block, inner = key block


def default_config(head_dim: int, dtype: torch.dtype, device: torch.device) -> AttentionConfig:
    """Tiles for the GPU, or small ones for the interpreter.

    GPU tiles for the 16-bit dtypes: the largest that compile without register
    spills for sm_80 and sm_90 and fit A100 shared memory (checked offline by
    `python -m chatbaker_kernels.compile_check`); the benchmark is where to tune
    them further. fp32/fp64 values take twice the registers, so their tiles are
    smaller (fp32 attention is for checking, not for speed). The interpreter's
    tiles are small so that short test sequences still span several blocks and
    exercise the diagonal, tail and multi-block paths.
    """
    if device.type != "cuda":
        small = Tiles(32, 16, num_warps=4, num_stages=1)
        return AttentionConfig(fwd=small, dkdv=small, dq=small)
    if dtype.itemsize > 2:
        return AttentionConfig(
            fwd=Tiles(32, 16, num_warps=4, num_stages=2),
            dkdv=Tiles(64, 16, num_warps=8, num_stages=2),
            dq=Tiles(32, 16, num_warps=4, num_stages=2),
        )
    if head_dim <= 64:
        return AttentionConfig(
            fwd=Tiles(128, 64, num_warps=8, num_stages=3),
            dkdv=Tiles(128, 32, num_warps=8, num_stages=3),
            dq=Tiles(128, 64, num_warps=8, num_stages=3),
        )
    return AttentionConfig(
        fwd=Tiles(128, 32, num_warps=8, num_stages=3),
        dkdv=Tiles(64, 32, num_warps=8, num_stages=2),
        dq=Tiles(128, 32, num_warps=8, num_stages=3),
    )


@triton.jit
def _mma(a, b, acc, ACC: tl.constexpr, WIDEN: tl.constexpr):
    """acc + a @ b. WIDEN multiplies in fp32 (exact for bf16 inputs): the Triton
    interpreter multiplies bf16 tiles as raw uint16 bits (triton-lang/triton#11584)."""
    if WIDEN:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision="ieee", out_dtype=ACC)


@triton.jit
def _seq_bounds(CU_SEQLENS, seq, seqlen, VARLEN: tl.constexpr):
    """First token (int64) and length of sequence `seq`."""
    if VARLEN:
        start = tl.load(CU_SEQLENS + seq).to(tl.int64)
        length = tl.load(CU_SEQLENS + seq + 1) - tl.load(CU_SEQLENS + seq)
    else:
        start = seq.to(tl.int64) * seqlen
        length = seqlen
    return start, length


@triton.jit
def _tile_mask(rows, length, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Mask of a [rows, BLOCK_D] tile: rows inside the sequence, columns inside the head."""
    if BLOCK_D == HEAD_DIM:
        return (rows < length)[:, None]
    else:
        return (rows < length)[:, None] & (offs_d < HEAD_DIM)[None, :]


@triton.jit
def _fwd_kv_blocks(
    acc, l_i, m_i, q,
    k_base, v_base, kv_stride, offs_m, offs_d,
    lo, hi, length, qk_scale,
    CAUSAL_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC: tl.constexpr, WIDEN: tl.constexpr,
):  # fmt: skip
    """Online-softmax update of one query block with the key blocks in [lo, hi)."""
    for n_lo in range(lo, hi, BLOCK_N):
        offs_n = n_lo + tl.arange(0, BLOCK_N)
        kv_offs = offs_n[:, None] * kv_stride + offs_d[None, :]
        kv_mask = _tile_mask(offs_n, length, offs_d, HEAD_DIM, BLOCK_D)
        k = tl.load(k_base + kv_offs, mask=kv_mask, other=0.0)
        s = _mma(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC), ACC, WIDEN) * qk_scale
        if CAUSAL_MASK:
            allowed = (offs_n[None, :] <= offs_m[:, None]) & (offs_n < length)[None, :]
            s = tl.where(allowed, s, float("-inf"))
        # Every row has a finite max here: the first block a row sees always
        # contains key 0 of its sequence, so m_new is never -inf.
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + kv_offs, mask=kv_mask, other=0.0)
        acc = _mma(p.to(v.dtype), v, acc * alpha[:, None], ACC, WIDEN)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, OUT, LSE, CU_SEQLENS,
    qk_scale, seqlen, total_tokens,
    H_Q: tl.constexpr, H_KV: tl.constexpr, HEAD_DIM: tl.constexpr, VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC: tl.constexpr, WIDEN: tl.constexpr,
):  # fmt: skip
    # Causal work grows with the query block index: start the heaviest first.
    block_m = tl.num_programs(0) - 1 - tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    start, length = _seq_bounds(CU_SEQLENS, seq, seqlen, VARLEN)
    m_lo = block_m * BLOCK_M
    if m_lo >= length:  # past the end of a sequence shorter than the longest
        return
    kv_head = head // (H_Q // H_KV)

    offs_m = m_lo + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_offs = ((start + offs_m) * H_Q + head)[:, None] * HEAD_DIM + offs_d[None, :]
    q_mask = _tile_mask(offs_m, length, offs_d, HEAD_DIM, BLOCK_D)
    q = tl.load(Q + q_offs, mask=q_mask, other=0.0)
    k_base = K + (start * H_KV + kv_head) * HEAD_DIM
    v_base = V + (start * H_KV + kv_head) * HEAD_DIM

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
    l_i = tl.zeros([BLOCK_M], dtype=ACC)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)
    # Key blocks wholly below the diagonal need no mask ...
    acc, l_i, m_i = _fwd_kv_blocks(
        acc, l_i, m_i, q, k_base, v_base, H_KV * HEAD_DIM, offs_m, offs_d,
        0, m_lo, length, qk_scale, False,
        BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, ACC, WIDEN,
    )  # fmt: skip
    # ... the blocks on the diagonal (and the sequence's end) do.
    acc, l_i, m_i = _fwd_kv_blocks(
        acc, l_i, m_i, q, k_base, v_base, H_KV * HEAD_DIM, offs_m, offs_d,
        m_lo, tl.minimum(m_lo + BLOCK_M, length), length, qk_scale, True,
        BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, ACC, WIDEN,
    )  # fmt: skip

    o = acc / l_i[:, None]
    tl.store(OUT + q_offs, o.to(OUT.dtype.element_ty), mask=q_mask)
    lse_offs = head * total_tokens + start + offs_m
    tl.store(LSE + lse_offs, m_i + tl.log2(l_i), mask=offs_m < length)


@triton.jit
def _attn_bwd_delta_kernel(
    OUT, DO, DELTA, total_tokens,
    H_Q: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """delta = rowsum(dO * O), the softmax-gradient correction of every query row."""
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    head = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    offs = (offs_t.to(tl.int64) * H_Q + head)[:, None] * HEAD_DIM + offs_d[None, :]
    mask = _tile_mask(offs_t, total_tokens, offs_d, HEAD_DIM, BLOCK_D)
    o = tl.load(OUT + offs, mask=mask, other=0.0).to(ACC)
    do = tl.load(DO + offs, mask=mask, other=0.0).to(ACC)
    tl.store(
        DELTA + head * total_tokens + offs_t, tl.sum(o * do, axis=1), mask=offs_t < total_tokens
    )


@triton.jit
def _bwd_q_blocks_for_kv(
    dk, dv, k, v,
    q_base, do_base, lse_base, delta_base, q_stride, offs_n, offs_d,
    lo, hi, length, qk_scale,
    CAUSAL_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC: tl.constexpr, WIDEN: tl.constexpr,
):  # fmt: skip
    """Accumulate dk, dv of one key block over the query blocks in [lo, hi).

    Works on transposed scores (keys x queries) so dk and dv come out in their
    own layout. Query rows past the sequence end load as zeros (q, dO, lse and
    delta), which makes their dS and their dV contribution exactly zero.
    """
    for m_lo in range(lo, hi, BLOCK_M):
        offs_m = m_lo + tl.arange(0, BLOCK_M)
        q_offs = offs_m[:, None] * q_stride + offs_d[None, :]
        q_mask = _tile_mask(offs_m, length, offs_d, HEAD_DIM, BLOCK_D)
        q = tl.load(q_base + q_offs, mask=q_mask, other=0.0)
        do = tl.load(do_base + q_offs, mask=q_mask, other=0.0)
        lse = tl.load(lse_base + offs_m, mask=offs_m < length, other=0.0)
        delta = tl.load(delta_base + offs_m, mask=offs_m < length, other=0.0)

        s_t = _mma(k, tl.trans(q), tl.zeros([BLOCK_N, BLOCK_M], dtype=ACC), ACC, WIDEN) * qk_scale
        p_t = tl.exp2(s_t - lse[None, :])
        if CAUSAL_MASK:
            p_t = tl.where(offs_m[None, :] >= offs_n[:, None], p_t, 0.0)
        dv = _mma(p_t.to(do.dtype), do, dv, ACC, WIDEN)
        dp_t = _mma(v, tl.trans(do), tl.zeros([BLOCK_N, BLOCK_M], dtype=ACC), ACC, WIDEN)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = _mma(ds_t.to(q.dtype), q, dk, ACC, WIDEN)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, CU_SEQLENS,
    softmax_scale, qk_scale, seqlen, total_tokens,
    H_Q: tl.constexpr, H_KV: tl.constexpr, HEAD_DIM: tl.constexpr, VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC: tl.constexpr, WIDEN: tl.constexpr,
):  # fmt: skip
    block_n = tl.program_id(0)
    seq = tl.program_id(1)
    kv_head = tl.program_id(2)
    start, length = _seq_bounds(CU_SEQLENS, seq, seqlen, VARLEN)
    n_lo = block_n * BLOCK_N
    if n_lo >= length:
        return
    groups: tl.constexpr = H_Q // H_KV

    offs_n = n_lo + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_offs = ((start + offs_n) * H_KV + kv_head)[:, None] * HEAD_DIM + offs_d[None, :]
    kv_mask = _tile_mask(offs_n, length, offs_d, HEAD_DIM, BLOCK_D)
    k = tl.load(K + kv_offs, mask=kv_mask, other=0.0)
    v = tl.load(V + kv_offs, mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)
    for g in range(groups):
        head = kv_head * groups + g
        q_base = Q + (start * H_Q + head) * HEAD_DIM
        do_base = DO + (start * H_Q + head) * HEAD_DIM
        lse_base = LSE + head * total_tokens + start
        delta_base = DELTA + head * total_tokens + start
        # Queries that see this key block: the diagonal blocks (masked) ...
        dk, dv = _bwd_q_blocks_for_kv(
            dk, dv, k, v, q_base, do_base, lse_base, delta_base, H_Q * HEAD_DIM, offs_n, offs_d,
            n_lo, tl.minimum(n_lo + BLOCK_N, length), length, qk_scale, True,
            BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, ACC, WIDEN,
        )  # fmt: skip
        # ... and every later block of the sequence (unmasked).
        dk, dv = _bwd_q_blocks_for_kv(
            dk, dv, k, v, q_base, do_base, lse_base, delta_base, H_Q * HEAD_DIM, offs_n, offs_d,
            n_lo + BLOCK_N, length, length, qk_scale, False,
            BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, ACC, WIDEN,
        )  # fmt: skip
    tl.store(DK + kv_offs, (dk * softmax_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + kv_offs, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _bwd_kv_blocks_for_q(
    dq, q, do, lse, delta,
    k_base, v_base, kv_stride, offs_m, offs_d,
    lo, hi, length, qk_scale,
    CAUSAL_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC: tl.constexpr, WIDEN: tl.constexpr,
):  # fmt: skip
    """Accumulate dq of one query block over the key blocks in [lo, hi)."""
    for n_lo in range(lo, hi, BLOCK_N):
        offs_n = n_lo + tl.arange(0, BLOCK_N)
        kv_offs = offs_n[:, None] * kv_stride + offs_d[None, :]
        kv_mask = _tile_mask(offs_n, length, offs_d, HEAD_DIM, BLOCK_D)
        k = tl.load(k_base + kv_offs, mask=kv_mask, other=0.0)
        v = tl.load(v_base + kv_offs, mask=kv_mask, other=0.0)
        s = _mma(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC), ACC, WIDEN) * qk_scale
        p = tl.exp2(s - lse[:, None])
        if CAUSAL_MASK:
            allowed = (offs_n[None, :] <= offs_m[:, None]) & (offs_n < length)[None, :]
            p = tl.where(allowed, p, 0.0)
        dp = _mma(do, tl.trans(v), tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC), ACC, WIDEN)
        ds = p * (dp - delta[:, None])
        dq = _mma(ds.to(k.dtype), k, dq, ACC, WIDEN)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, CU_SEQLENS,
    softmax_scale, qk_scale, seqlen, total_tokens,
    H_Q: tl.constexpr, H_KV: tl.constexpr, HEAD_DIM: tl.constexpr, VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC: tl.constexpr, WIDEN: tl.constexpr,
):  # fmt: skip
    block_m = tl.num_programs(0) - 1 - tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    start, length = _seq_bounds(CU_SEQLENS, seq, seqlen, VARLEN)
    m_lo = block_m * BLOCK_M
    if m_lo >= length:
        return
    kv_head = head // (H_Q // H_KV)

    offs_m = m_lo + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_offs = ((start + offs_m) * H_Q + head)[:, None] * HEAD_DIM + offs_d[None, :]
    q_mask = _tile_mask(offs_m, length, offs_d, HEAD_DIM, BLOCK_D)
    q = tl.load(Q + q_offs, mask=q_mask, other=0.0)
    do = tl.load(DO + q_offs, mask=q_mask, other=0.0)
    lse = tl.load(LSE + head * total_tokens + start + offs_m, mask=offs_m < length, other=0.0)
    delta = tl.load(DELTA + head * total_tokens + start + offs_m, mask=offs_m < length, other=0.0)
    k_base = K + (start * H_KV + kv_head) * HEAD_DIM
    v_base = V + (start * H_KV + kv_head) * HEAD_DIM

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)
    dq = _bwd_kv_blocks_for_q(
        dq, q, do, lse, delta, k_base, v_base, H_KV * HEAD_DIM, offs_m, offs_d,
        0, m_lo, length, qk_scale, False,
        BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, ACC, WIDEN,
    )  # fmt: skip
    dq = _bwd_kv_blocks_for_q(
        dq, q, do, lse, delta, k_base, v_base, H_KV * HEAD_DIM, offs_m, offs_d,
        m_lo, tl.minimum(m_lo + BLOCK_M, length), length, qk_scale, True,
        BLOCK_M, BLOCK_N, HEAD_DIM, BLOCK_D, ACC, WIDEN,
    )  # fmt: skip
    tl.store(DQ + q_offs, (dq * softmax_scale).to(DQ.dtype.element_ty), mask=q_mask)


@dataclass(frozen=True)
class _Problem:
    """Shape facts every kernel launch needs."""

    total_tokens: int
    num_seqs: int
    max_seqlen: int
    seqlen: int  # the common length of a dense batch; 0 for varlen
    h_q: int
    h_kv: int
    head_dim: int
    varlen: bool

    @property
    def empty(self) -> bool:
        return self.num_seqs == 0 or self.max_seqlen == 0

    def kernel_args(self) -> dict:
        return {
            "H_Q": self.h_q,
            "H_KV": self.h_kv,
            "HEAD_DIM": self.head_dim,
            "VARLEN": self.varlen,
            "BLOCK_D": max(triton.next_power_of_2(self.head_dim), 16),
        }


class FlashAttentionFunction(torch.autograd.Function):
    """Causal attention; see `flash_attention` for shapes."""

    @staticmethod
    def forward(
        ctx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        softmax_scale: float,
        cu_seqlens: torch.Tensor | None,
        max_seqlen: int | None,
        config: AttentionConfig | None,
    ) -> torch.Tensor:
        in_shape, kv_shape = q.shape, k.shape
        if cu_seqlens is None:
            b, s, h_q, d = q.shape
            problem = _Problem(b * s, b, s, s, h_q, k.shape[2], d, varlen=False)
        else:
            t, h_q, d = q.shape
            if max_seqlen is None:
                lengths = cu_seqlens[1:] - cu_seqlens[:-1]
                max_seqlen = int(lengths.max().item()) if lengths.numel() else 0
            problem = _Problem(t, cu_seqlens.numel() - 1, max_seqlen, 0, h_q, k.shape[1], d, True)
        q, k, v = (x.reshape(-1, x.shape[-2], d).contiguous() for x in (q, k, v))
        config = config or default_config(d, q.dtype, q.device)
        acc = acc_dtype(q.dtype)
        widen = triton_interpreting() and q.dtype == torch.bfloat16

        o = _new_output(q, problem)
        lse = torch.empty(
            h_q, problem.total_tokens, dtype=acc_torch_dtype(q.dtype), device=q.device
        )
        if not problem.empty:
            tiles = config.fwd
            grid = (triton.cdiv(problem.max_seqlen, tiles.outer), problem.num_seqs, h_q)
            _attn_fwd_kernel[grid](
                q, k, v, o, lse, cu_seqlens,
                softmax_scale * LOG2_E, problem.seqlen, problem.total_tokens,
                **problem.kernel_args(),
                BLOCK_M=tiles.outer, BLOCK_N=tiles.inner,
                ACC=acc, WIDEN=widen,
                num_warps=tiles.num_warps, num_stages=tiles.num_stages,
            )  # fmt: skip

        ctx.save_for_backward(q, k, v, o, lse, cu_seqlens)
        ctx.problem, ctx.config, ctx.softmax_scale = problem, config, softmax_scale
        ctx.in_shape, ctx.kv_shape, ctx.acc, ctx.widen = in_shape, kv_shape, acc, widen
        return o.view(in_shape)

    @staticmethod
    def backward(ctx, do: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, o, lse, cu_seqlens = ctx.saved_tensors
        problem, config = ctx.problem, ctx.config
        do = do.reshape(o.shape).contiguous()
        dq, dk, dv = (_new_output(x, problem) for x in (q, k, v))
        if not problem.empty:
            kernel_args = problem.kernel_args()
            delta = torch.empty_like(lse)
            block_t = 64
            _attn_bwd_delta_kernel[(triton.cdiv(problem.total_tokens, block_t), problem.h_q)](
                o, do, delta, problem.total_tokens,
                H_Q=problem.h_q, HEAD_DIM=problem.head_dim,
                BLOCK_T=block_t, BLOCK_D=kernel_args["BLOCK_D"], ACC=ctx.acc,
            )  # fmt: skip
            shared_args = {
                "softmax_scale": ctx.softmax_scale,
                "qk_scale": ctx.softmax_scale * LOG2_E,
                "seqlen": problem.seqlen,
                "total_tokens": problem.total_tokens,
                "ACC": ctx.acc,
                "WIDEN": ctx.widen,
                **kernel_args,
            }
            tiles = config.dkdv
            _attn_bwd_dkdv_kernel[(triton.cdiv(problem.max_seqlen, tiles.outer), problem.num_seqs, problem.h_kv)](
                q, k, v, do, lse, delta, dk, dv, cu_seqlens,
                BLOCK_M=tiles.inner, BLOCK_N=tiles.outer,
                num_warps=tiles.num_warps, num_stages=tiles.num_stages,
                **shared_args,
            )  # fmt: skip
            tiles = config.dq
            _attn_bwd_dq_kernel[(triton.cdiv(problem.max_seqlen, tiles.outer), problem.num_seqs, problem.h_q)](
                q, k, v, do, lse, delta, dq, cu_seqlens,
                BLOCK_M=tiles.outer, BLOCK_N=tiles.inner,
                num_warps=tiles.num_warps, num_stages=tiles.num_stages,
                **shared_args,
            )  # fmt: skip
        return (
            dq.view(ctx.in_shape),
            dk.view(ctx.kv_shape),
            dv.view(ctx.kv_shape),
            None,
            None,
            None,
            None,
        )


def _new_output(like: torch.Tensor, problem: _Problem) -> torch.Tensor:
    """Output buffer for a kernel. Varlen tokens after cu_seqlens[-1] (padding)
    belong to no sequence and no program writes them: they stay zero."""
    return torch.zeros_like(like) if problem.varlen else torch.empty_like(like)


def _check_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor | None
) -> None:
    rank = 4 if cu_seqlens is None else 3
    layout = "[b, s, h, d]" if cu_seqlens is None else "[t, h, d] (varlen)"
    if q.dim() != rank or k.dim() != rank or k.shape != v.shape:
        raise ValueError(
            f"expected q, k, v as {layout} with k.shape == v.shape; got {q.shape}, {k.shape}, {v.shape}"
        )
    if q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {list(q.shape)} and k {list(k.shape)} differ in tokens or head dim")
    if q.shape[-2] % k.shape[-2]:
        raise ValueError(
            f"query heads ({q.shape[-2]}) must be a multiple of key/value heads ({k.shape[-2]})"
        )
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"head dim {q.shape[-1]} > {MAX_HEAD_DIM} is not supported")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if cu_seqlens is not None and (cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1):
        raise ValueError("cu_seqlens must be a 1-D int32 tensor of sequence offsets [n + 1]")


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    softmax_scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    config: AttentionConfig | None = None,
) -> torch.Tensor:
    """Causal attention softmax(scale * q k^T) v without materialising the scores.

    dense:  q [b, s, hq, d], k/v [b, s, hkv, d]
    varlen: q [t, hq, d], k/v [t, hkv, d], cu_seqlens int32 [n + 1] (offsets of
            n packed sequences, cu_seqlens[-1] == t), causal within each
            sequence and nothing across them. max_seqlen, the longest sequence,
            is computed from cu_seqlens (a device sync) when not given.
    hq must be a multiple of hkv (GQA); d <= 256; the scale defaults to 1/sqrt(d).
    Returns q's shape and dtype.
    """
    _check_inputs(q, k, v, cu_seqlens)
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q.shape[-1])
    if max_seqlen is not None:
        max_seqlen = int(max_seqlen)  # megatron's PackedSeqParams may carry a 0-d tensor
    return FlashAttentionFunction.apply(q, k, v, softmax_scale, cu_seqlens, max_seqlen, config)
