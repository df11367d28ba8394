"""RMSNorm in Triton: fused forward and backward, optionally fused with the residual add.

    y = x / sqrt(mean(x^2) + eps) * weight          (statistics and math in fp32)

With a residual (the pre-norm block's `h = x + residual; y = norm(h)`), one
kernel reads x and residual once and writes both h and y. h is rounded to the
input dtype *before* it is normalised, so the fused op returns exactly what the
unfused `norm(x + residual)` would.

Any hidden size works: a row that fits in one block (up to `MAX_BLOCK`
elements, every LLaMA size) is held in registers and read once; wider rows are
processed in chunks of `MAX_BLOCK` with a second read.

Backward, per row (xhat = x * rstd):
    dx = rstd * (weight * dy - xhat * mean(xhat * weight * dy))
    dweight = sum over rows of dy * xhat
Each program owns a contiguous range of rows and keeps its dweight partial sum
in registers; the partials ([programs, hidden] fp32) are summed afterwards, so
the result is deterministic (no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from chatbaker_kernels._common import acc_dtype, acc_torch_dtype, parallel_programs

# Widest row held in registers and read once: the 1.3B (2048) and 7B (4096)
# hidden sizes. Wider rows go in chunks of this width with a second read; an
# 8192-wide block makes the backward spill registers (see compile_check).
MAX_BLOCK = 4096


@triton.jit
def _load_row_chunk(
    X, RES, SUM, offs, mask, HAS_RESIDUAL: tl.constexpr, WRITE_SUM: tl.constexpr, ACC: tl.constexpr
):
    """x (or x + residual, rounded to the storage dtype) for one chunk of a row, as ACC."""
    x = tl.load(X + offs, mask=mask, other=0.0).to(ACC)
    if HAS_RESIDUAL:
        h = (x + tl.load(RES + offs, mask=mask, other=0.0).to(ACC)).to(SUM.dtype.element_ty)
        if WRITE_SUM:
            tl.store(SUM + offs, h, mask=mask)
        x = h.to(ACC)
    return x


@triton.jit
def _rms_norm_fwd_kernel(
    X, RES, W, Y, SUM, RSTD,
    n_cols, eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
    ONE_BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    row_start = row * n_cols
    cols = tl.arange(0, BLOCK)
    if ONE_BLOCK:
        mask = cols < n_cols
        x = _load_row_chunk(X, RES, SUM, row_start + cols, mask, HAS_RESIDUAL, True, ACC)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
        w = tl.load(W + cols, mask=mask, other=0.0).to(ACC)
        tl.store(Y + row_start + cols, (x * rstd * w).to(Y.dtype.element_ty), mask=mask)
    else:
        sum_sq = tl.zeros([BLOCK], dtype=ACC)
        for start in range(0, n_cols, BLOCK):
            mask = start + cols < n_cols
            x = _load_row_chunk(
                X, RES, SUM, row_start + start + cols, mask, HAS_RESIDUAL, True, ACC
            )
            sum_sq += x * x
        rstd = 1.0 / tl.sqrt(tl.sum(sum_sq, axis=0) / n_cols + eps)
        for start in range(0, n_cols, BLOCK):
            mask = start + cols < n_cols
            # Recompute x + residual rather than read back SUM: the same value,
            # and no read-after-write ordering to reason about.
            x = _load_row_chunk(
                X, RES, SUM, row_start + start + cols, mask, HAS_RESIDUAL, False, ACC
            )
            w = tl.load(W + start + cols, mask=mask, other=0.0).to(ACC)
            tl.store(Y + row_start + start + cols, (x * rstd * w).to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + row, rstd)


@triton.jit
def _rms_norm_bwd_row_dot_kernel(
    DY, X, W, RSTD, ROW_DOT,
    n_cols,
    BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):  # fmt: skip
    """mean(xhat * weight * dy) per row, for rows wider than one block."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        offs = row * n_cols + start + cols
        x = tl.load(X + offs, mask=mask, other=0.0).to(ACC)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(ACC)
        w = tl.load(W + start + cols, mask=mask, other=0.0).to(ACC)
        acc += x * w * dy
    rstd = tl.load(RSTD + row)
    tl.store(ROW_DOT + row, tl.sum(acc, axis=0) * rstd / n_cols)


@triton.jit
def _rms_norm_bwd_kernel(
    DY, X, W, RSTD, ROW_DOT, DSUM, DX, DW_PARTIAL,
    n_rows, n_cols, rows_per_program,
    HAS_DSUM: tl.constexpr,
    BLOCK: tl.constexpr,
    ONE_BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):  # fmt: skip
    """dx for a range of rows and one column chunk, plus that range's dweight partial sum."""
    pid = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    w = tl.load(W + cols, mask=mask, other=0.0).to(ACC)
    dw = tl.zeros([BLOCK], dtype=ACC)
    # int64 bounds make the loop index int64, so row * n_cols cannot overflow.
    first_row = pid.to(tl.int64) * rows_per_program
    last_row = tl.minimum(first_row + rows_per_program, n_rows)
    for row in range(first_row, last_row):
        offs = row * n_cols + cols
        rstd = tl.load(RSTD + row)
        xhat = tl.load(X + offs, mask=mask, other=0.0).to(ACC) * rstd
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(ACC)
        wdy = w * dy
        row_dot = tl.sum(xhat * wdy, axis=0) / n_cols if ONE_BLOCK else tl.load(ROW_DOT + row)
        dx = (wdy - xhat * row_dot) * rstd
        if HAS_DSUM:
            dx += tl.load(DSUM + offs, mask=mask, other=0.0).to(ACC)
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
    tl.store(DW_PARTIAL + pid.to(tl.int64) * n_cols + cols, dw, mask=mask)


def _block_and_warps(n_cols: int, max_block: int) -> tuple[int, int]:
    """Block width (the whole row rounded up to a power of two, or a chunk of a
    wider row) and warps per program: about 16 columns per thread, enough for
    wide vector loads and few enough to stay in registers."""
    block = min(triton.next_power_of_2(n_cols), max_block)
    return block, min(max(block // 512, 4), 16)


class RMSNormFunction(torch.autograd.Function):
    """RMSNorm over the last dim, optionally of `x + residual` (then also returns the sum)."""

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        weight: torch.Tensor,
        eps: float,
        max_block: int,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        shape, n_cols = x.shape, x.shape[-1]
        x2 = x.reshape(-1, n_cols).contiguous()
        res2 = residual.reshape(-1, n_cols).contiguous() if residual is not None else None
        weight = weight.contiguous()
        n_rows = x2.shape[0]
        block, num_warps = _block_and_warps(n_cols, max_block)
        acc = acc_dtype(x.dtype)

        y = torch.empty_like(x2)
        h = torch.empty_like(x2) if residual is not None else None
        rstd = torch.empty(n_rows, dtype=acc_torch_dtype(x.dtype), device=x.device)
        if n_rows > 0:
            _rms_norm_fwd_kernel[(n_rows,)](
                x2, res2, weight, y, h, rstd,
                n_cols, eps,
                HAS_RESIDUAL=residual is not None,
                BLOCK=block,
                ONE_BLOCK=block >= n_cols,
                ACC=acc,
                num_warps=num_warps,
            )  # fmt: skip

        ctx.save_for_backward(h if residual is not None else x2, weight, rstd)
        ctx.has_residual = residual is not None
        ctx.shape, ctx.max_block = shape, max_block
        if h is None:  # no residual
            return y.view(shape)
        return y.view(shape), h.view(shape)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        normed_input, weight, rstd = ctx.saved_tensors
        n_rows, n_cols = normed_input.shape
        dy = grads[0].reshape(-1, n_cols).contiguous()
        # The sum h = x + residual also flows on to the next block: its
        # gradient adds straight into dx (and d residual, which is the same).
        dsum = grads[1].reshape(-1, n_cols).contiguous() if ctx.has_residual else None
        if n_rows == 0:
            dx = torch.zeros_like(dy).view(ctx.shape)
            return dx, (dx if ctx.has_residual else None), torch.zeros_like(weight), None, None
        block, num_warps = _block_and_warps(n_cols, ctx.max_block)
        one_block = block >= n_cols
        acc = acc_dtype(normed_input.dtype)

        programs = min(n_rows, parallel_programs(dy.device, per_sm=2))
        rows_per_program = triton.cdiv(n_rows, programs)
        programs = triton.cdiv(n_rows, rows_per_program)
        dx = torch.empty_like(dy)
        # Every (program, chunk) writes its columns of its row, even with no rows.
        dw_partial = torch.empty(programs, n_cols, dtype=rstd.dtype, device=dy.device)
        row_dot = None
        if not one_block:
            row_dot = torch.empty_like(rstd)
            _rms_norm_bwd_row_dot_kernel[(n_rows,)](
                dy, normed_input, weight, rstd, row_dot, n_cols,
                BLOCK=block, ACC=acc, num_warps=num_warps,
            )  # fmt: skip
        _rms_norm_bwd_kernel[(programs, triton.cdiv(n_cols, block))](
            dy, normed_input, weight, rstd, row_dot, dsum, dx, dw_partial,
            n_rows, n_cols, rows_per_program,
            HAS_DSUM=dsum is not None,
            BLOCK=block,
            ONE_BLOCK=one_block,
            ACC=acc,
            num_warps=num_warps,
        )  # fmt: skip
        dweight = dw_partial.sum(0).to(weight.dtype)
        dx = dx.view(ctx.shape)
        return dx, (dx if ctx.has_residual else None), dweight, None, None


def _check_inputs(x: torch.Tensor, weight: torch.Tensor, max_block: int) -> None:
    if weight.dim() != 1 or weight.numel() != x.shape[-1]:
        raise ValueError(f"weight must have shape [{x.shape[-1]}], got {list(weight.shape)}")
    if max_block < 16 or max_block & (max_block - 1):
        raise ValueError(f"max_block must be a power of two >= 16, got {max_block}")


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *, max_block: int = MAX_BLOCK
) -> torch.Tensor:
    """RMSNorm of x over its last dim; output in x's dtype, weight of any float dtype.

    Rows wider than `max_block` (a power of two) are processed in chunks of
    that width; the default holds every LLaMA-sized row in one block.
    """
    _check_inputs(x, weight, max_block)
    return RMSNormFunction.apply(x, None, weight, eps, max_block)


def add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    *,
    max_block: int = MAX_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused pre-norm step: returns (rms_norm(x + residual), x + residual).

    x + residual is rounded to x's dtype before it is normalised, exactly as
    the unfused `rms_norm(x + residual)`; `max_block` as for `rms_norm`.
    """
    _check_inputs(x, weight, max_block)
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(
            f"residual must match x: got {list(residual.shape)} {residual.dtype}, "
            f"x is {list(x.shape)} {x.dtype}"
        )
    return RMSNormFunction.apply(x, residual, weight, eps, max_block)
