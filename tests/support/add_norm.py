"""chatbaker_kernels' fused residual add + RMSNorm per backend (tests and benchmarks/kernels.py).

The model does not use the fused op (docs/kernels.md); it stays a tested public
op of chatbaker_kernels. Backends without one add, then normalise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from chatbaker_megatron.model import dispatch

AddNorm = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def add_rms_norm_of(backend: str, norm: Callable = dispatch.torch_rms_norm) -> AddNorm:
    """(norm(x + residual), x + residual): fused for triton and cuda, else `norm` after the add."""
    if backend == "cuda":
        from chatbaker_kernels.cuda_rmsnorm import add_rms_norm

        return add_rms_norm
    if backend == "triton":
        from chatbaker_kernels.triton_rmsnorm import add_rms_norm

        return add_rms_norm

    def add_then_norm(x, residual, weight, eps):
        h = x + residual
        return norm(h, weight, eps), h

    return add_then_norm
