"""Float64 reference math for the kernel tests, written plainly, and the tolerances per dtype.

Every kernel is compared against these functions evaluated in float64 on the
same (already rounded) inputs, so the measured difference is the kernel's own
error: fp32/fp16/bf16 arithmetic and rounding of its outputs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

# Elementwise |actual - reference| <= atol + rtol * |reference|, per dtype.
# fp32: ~100 units of roundoff (u = 6e-8) for long fp32 sums.
# fp16 (u = 4.9e-4) and bf16 (u = 3.9e-3): a few units of roundoff of the
# output's own rounding, plus the rounding of intermediates the kernels store in
# the input dtype (attention's P and dS tiles, which is what FlashAttention does).
TOLERANCE = {
    torch.float64: {"atol": 1e-10, "rtol": 1e-10},
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float16: {"atol": 5e-3, "rtol": 5e-3},
    torch.bfloat16: {"atol": 4e-2, "rtol": 4e-2},
}


@dataclass
class Error:
    """Max abs error and max abs error relative to the largest |reference| value."""

    abs: float
    rel: float


def error(actual: torch.Tensor, reference: torch.Tensor) -> Error:
    diff = (actual.double() - reference.double()).abs().max().item() if actual.numel() else 0.0
    scale = reference.abs().max().item() if reference.numel() else 0.0
    return Error(diff, diff / scale if scale else diff)


def assert_matches(
    actual: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype, what: str
) -> None:
    assert actual.shape == reference.shape, f"{what}: shape {actual.shape} != {reference.shape}"
    torch.testing.assert_close(
        actual.double(),
        reference.double(),
        msg=lambda m: f"{what} ({dtype}): {m}",
        **TOLERANCE[dtype],
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.double()


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(scale * q k^T, causal) v in float64, one sequence and one head at a time.

    dense q [b, s, hq, d] or varlen q [t, hq, d] with cu_seqlens; k/v have hkv
    heads and query head h reads key/value head h // (hq // hkv).
    """
    dense = cu_seqlens is None
    if dense:
        b, s = q.shape[:2]
        bounds = [(i * s, (i + 1) * s) for i in range(b)]
        q, k, v = (x.reshape(b * s, *x.shape[2:]) for x in (q, k, v))
    else:
        offsets = cu_seqlens.tolist()
        bounds = list(itertools.pairwise(offsets))
    q, k, v = q.double(), k.double(), v.double()
    groups = q.shape[1] // k.shape[1]
    rows = []
    for start, end in bounds:
        heads = []
        for h in range(q.shape[1]):
            scores = q[start:end, h] @ k[start:end, h // groups].T * scale
            future = torch.ones(end - start, end - start, dtype=torch.bool, device=q.device).triu(1)
            probs = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
            heads.append(probs @ v[start:end, h // groups])
        rows.append(torch.stack(heads, dim=1))
    out = torch.cat(rows)
    if not dense and out.shape[0] < q.shape[0]:
        # Tokens after cu_seqlens[-1] belong to no sequence: zero output.
        out = torch.cat([out, torch.zeros_like(q[out.shape[0] :])])
    return out.reshape(b, s, *out.shape[1:]) if dense else out
