"""RMSNorm on the optional CUDA extension `chatbaker_kernels._cuda_rmsnorm` (csrc/rmsnorm.cu).

setup.py builds the extension only where a CUDA toolkit and a CUDA build of
torch are present; `is_available()` says whether this install has it. Same
semantics as `chatbaker_kernels.triton_rmsnorm` (float32 statistics, the
residual sum rounded to the input dtype before it is normalised), for
float32/float16/bfloat16 inputs and a weight in the input's dtype or float32.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

EXTENSION = "chatbaker_kernels._cuda_rmsnorm"


def is_available() -> bool:
    """True when the extension is built and a GPU is present (finds, never imports, the module)."""
    return torch.cuda.is_available() and importlib.util.find_spec(EXTENSION) is not None


def _extension():
    return importlib.import_module(EXTENSION)


class CudaRMSNormFunction(torch.autograd.Function):
    """RMSNorm over the last dim, optionally of `x + residual` (then also returns the sum)."""

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        weight: torch.Tensor,
        eps: float,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        shape, n_cols = x.shape, x.shape[-1]
        x2 = x.reshape(-1, n_cols).contiguous()
        res2 = residual.reshape(-1, n_cols).contiguous() if residual is not None else None
        y, h, rstd = _extension().forward(x2, res2, weight.contiguous(), eps)
        ctx.save_for_backward(h if residual is not None else x2, weight, rstd)
        ctx.has_residual, ctx.shape = residual is not None, shape
        if residual is None:
            return y.view(shape)
        return y.view(shape), h.view(shape)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        normed_input, weight, rstd = ctx.saved_tensors
        n_cols = normed_input.shape[-1]
        dy = grads[0].reshape(-1, n_cols).contiguous()
        dsum = grads[1].reshape(-1, n_cols).contiguous() if ctx.has_residual else None
        dx, dweight = _extension().backward(dy, normed_input, weight.contiguous(), rstd, dsum)
        dx = dx.view(ctx.shape)
        return dx, (dx if ctx.has_residual else None), dweight, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm of x (a CUDA tensor) over its last dim; output in x's dtype."""
    return CudaRMSNormFunction.apply(x, None, weight, eps)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused pre-norm step: returns (rms_norm(x + residual), x + residual)."""
    return CudaRMSNormFunction.apply(x, residual, weight, eps)
