"""Behaviour of the Triton kernels beyond the backend parity grid (test_backends.py).

gradcheck of the autograd Functions in float64, the chunked RMSNorm path for
rows wider than one block, the GPU tile shapes run through the interpreter,
fused == unfused exactness, padding after the last packed sequence, empty
inputs, and input validation.
"""

from __future__ import annotations

import pytest
import torch

from chatbaker_kernels import triton_attention, triton_rmsnorm
from chatbaker_kernels._common import triton_interpreting
from chatbaker_kernels.triton_attention import AttentionConfig, Tiles, flash_attention
from tests.kernels import reference

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _randn(*shape: int, dtype: torch.dtype = torch.float64, grad: bool = True) -> torch.Tensor:
    return torch.randn(*shape, device=DEVICE, dtype=dtype).requires_grad_(grad)


# ---------------------------------------------------------------- gradcheck --
# fast_mode checks the Jacobian along random directions (a few evaluations
# instead of two per input element), which keeps the interpreter quick.


@pytest.mark.parametrize("max_block", [triton_rmsnorm.MAX_BLOCK, 16], ids=["one-block", "chunked"])
def test_rms_norm_gradcheck(max_block):
    torch.manual_seed(0)
    x, weight = _randn(3, 37), _randn(37)
    assert torch.autograd.gradcheck(
        lambda x, w: triton_rmsnorm.rms_norm(x, w, 1e-6, max_block=max_block),
        (x, weight),
        fast_mode=True,
    )


@pytest.mark.parametrize("max_block", [triton_rmsnorm.MAX_BLOCK, 16], ids=["one-block", "chunked"])
def test_add_rms_norm_gradcheck(max_block):
    torch.manual_seed(0)
    x, residual, weight = _randn(2, 3, 20), _randn(2, 3, 20), _randn(20)
    assert torch.autograd.gradcheck(
        lambda x, r, w: triton_rmsnorm.add_rms_norm(x, r, w, 1e-6, max_block=max_block),
        (x, residual, weight),
        fast_mode=True,
    )


def test_attention_gradcheck_dense_gqa():
    torch.manual_seed(0)
    q, k, v = _randn(2, 19, 4, 16), _randn(2, 19, 2, 16), _randn(2, 19, 2, 16)
    assert torch.autograd.gradcheck(
        lambda q, k, v: flash_attention(q, k, v), (q, k, v), fast_mode=True
    )


def test_attention_gradcheck_varlen():
    torch.manual_seed(0)
    cu_seqlens = torch.tensor([0, 3, 20, 21], dtype=torch.int32, device=DEVICE)
    q, k, v = _randn(21, 2, 16), _randn(21, 1, 16), _randn(21, 1, 16)
    assert torch.autograd.gradcheck(
        lambda q, k, v: flash_attention(q, k, v, softmax_scale=0.3, cu_seqlens=cu_seqlens),
        (q, k, v),
        fast_mode=True,
    )


# ------------------------------------------------------------------ RMSNorm --


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n_cols", [16, 40, 100])
def test_rms_norm_chunked_path_matches_reference(dtype, n_cols):
    """Rows wider than max_block go through the two-pass chunked kernels."""
    torch.manual_seed(0)
    x, residual = _randn(6, n_cols, dtype=dtype), _randn(6, n_cols, dtype=dtype)
    weight = _randn(n_cols, dtype=dtype)
    y, h = triton_rmsnorm.add_rms_norm(x, residual, weight, 1e-6, max_block=16)
    dy, dh = torch.randn_like(y), torch.randn_like(h)
    ((y.float() * dy).sum() + (h.float() * dh).sum()).backward()

    x64, r64, w64 = (t.detach().double().requires_grad_() for t in (x, residual, weight))
    h64 = x64 + r64
    y64 = reference.rms_norm(h64, w64, 1e-6)
    ((y64 * dy.double()).sum() + (h64 * dh.double()).sum()).backward()
    for what, actual, expected in [
        ("y", y, y64),
        ("dx", x.grad, x64.grad),
        ("dresidual", residual.grad, r64.grad),
        ("dweight", weight.grad, w64.grad),
    ]:
        reference.assert_matches(actual, expected, dtype, what)


def test_add_rms_norm_normalises_the_sum_it_returns():
    """The fused sum h is rounded to the input dtype before the norm: y == rms_norm(h), bitwise."""
    torch.manual_seed(0)
    x, residual = _randn(5, 96, dtype=torch.bfloat16), _randn(5, 96, dtype=torch.bfloat16)
    weight = _randn(96, dtype=torch.float32, grad=False)
    y, h = triton_rmsnorm.add_rms_norm(x, residual, weight)
    assert torch.equal(y, triton_rmsnorm.rms_norm(h, weight))
    if triton_interpreting():
        # The interpreter truncates fp32 -> bf16 casts where GPUs round to nearest.
        torch.testing.assert_close(h, x + residual, atol=0, rtol=2**-7)
    else:
        assert torch.equal(h, x + residual)


def test_rms_norm_empty_and_noncontiguous():
    weight = _randn(8, dtype=torch.float32)
    empty = _randn(0, 8, dtype=torch.float32)
    out = triton_rmsnorm.rms_norm(empty, weight)
    out.sum().backward()
    assert out.shape == (0, 8)
    assert torch.equal(weight.grad, torch.zeros_like(weight))

    torch.manual_seed(0)
    x = torch.randn(8, 6, device=DEVICE).t()  # [6, 8], not contiguous
    expected = reference.rms_norm(x, weight.detach(), 1e-6)
    reference.assert_matches(
        triton_rmsnorm.rms_norm(x, weight.detach()), expected, torch.float32, "y"
    )


def test_rms_norm_rejects_bad_arguments():
    x = torch.randn(2, 8, device=DEVICE)
    with pytest.raises(ValueError, match="weight must have shape"):
        triton_rmsnorm.rms_norm(x, torch.ones(7, device=DEVICE))
    with pytest.raises(ValueError, match="residual must match"):
        triton_rmsnorm.add_rms_norm(x, x.half(), torch.ones(8, device=DEVICE))
    with pytest.raises(ValueError, match="power of two"):
        triton_rmsnorm.rms_norm(x, torch.ones(8, device=DEVICE), max_block=24)


# ---------------------------------------------------------------- attention --


@pytest.mark.parametrize(
    ("dtype", "seqlen", "head_dim"),
    [(torch.float16, 150, 64), (torch.float16, 70, 128), (torch.float32, 45, 64)],
    ids=str,
)
def test_attention_with_gpu_tiles(dtype, seqlen, head_dim):
    """The tile shapes used on the GPU (e.g. 128x64 and 64x32), run here too.

    Sequence lengths span several outer tiles with a ragged tail, so the
    diagonal, unmasked and tail paths of every kernel see GPU-sized blocks.
    """
    torch.manual_seed(0)
    config = triton_attention.default_config(head_dim, dtype, torch.device("cuda"))
    q = _randn(1, seqlen, 2, head_dim, dtype=dtype)
    k, v = _randn(1, seqlen, 1, head_dim, dtype=dtype), _randn(1, seqlen, 1, head_dim, dtype=dtype)
    scale = head_dim**-0.5
    out = flash_attention(q, k, v, softmax_scale=scale, config=config)
    do = torch.randn_like(out)
    out.backward(do)

    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out64 = reference.causal_attention(q64, k64, v64, scale)
    out64.backward(do.double())
    for what, actual, expected in [
        ("out", out, out64),
        ("dq", q.grad, q64.grad),
        ("dk", k.grad, k64.grad),
        ("dv", v.grad, v64.grad),
    ]:
        reference.assert_matches(actual, expected, dtype, what)


def test_varlen_padding_after_last_sequence_is_zero():
    """Tokens past cu_seqlens[-1] belong to no sequence: zero output, zero gradients."""
    torch.manual_seed(0)
    cu_seqlens = torch.tensor([0, 10, 25], dtype=torch.int32, device=DEVICE)
    q, k, v = (_randn(30, 2, 16, dtype=torch.float32) for _ in range(3))
    out = flash_attention(q, k, v, cu_seqlens=cu_seqlens)
    out.backward(torch.ones_like(out))

    expected = reference.causal_attention(
        q[:25].detach(), k[:25].detach(), v[:25].detach(), 0.25, cu_seqlens
    )
    reference.assert_matches(out[:25], expected, torch.float32, "out")
    assert torch.equal(out[25:], torch.zeros_like(out[25:]))
    for grad in (q.grad, k.grad, v.grad):
        assert torch.equal(grad[25:], torch.zeros_like(grad[25:]))


def test_attention_accepts_megatron_sbhd_views():
    """megatron's [s, b, h, d] transposed to [b, s, h, d] is a non-contiguous view."""
    torch.manual_seed(0)
    q_sbhd = torch.randn(21, 2, 2, 16, device=DEVICE)
    q = q_sbhd.transpose(0, 1)
    assert not q.is_contiguous()
    out = flash_attention(q, q, q)
    expected = reference.causal_attention(q, q, q, 0.25)
    reference.assert_matches(out, expected, torch.float32, "out")


def test_attention_empty_inputs():
    q = _randn(0, 4, 2, 16, dtype=torch.float32)
    out = flash_attention(q, q, q)
    out.sum().backward()
    assert out.shape == q.shape and q.grad.shape == q.shape

    no_tokens = _randn(0, 2, 16, dtype=torch.float32)
    for offsets in ([0], [0, 0]):
        cu_seqlens = torch.tensor(offsets, dtype=torch.int32, device=DEVICE)
        out = flash_attention(no_tokens, no_tokens, no_tokens, cu_seqlens=cu_seqlens)
        out.sum().backward()
        assert out.shape == no_tokens.shape


def test_attention_rejects_bad_arguments():
    q = torch.randn(1, 4, 3, 16, device=DEVICE)
    kv = torch.randn(1, 4, 2, 16, device=DEVICE)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        flash_attention(q, kv, kv)
    with pytest.raises(ValueError, match="dtypes differ"):
        flash_attention(q, q.half(), q.half())
    with pytest.raises(ValueError, match="int32"):
        flash_attention(q[0], q[0], q[0], cu_seqlens=torch.tensor([0, 4], device=DEVICE))
    with pytest.raises(ValueError, match="head dim"):
        big = torch.randn(1, 2, 1, 512, device=DEVICE)
        flash_attention(big, big, big)
    with pytest.raises(ValueError, match="multiple of inner tile"):
        AttentionConfig(fwd=Tiles(32, 64, 4, 1), dkdv=Tiles(32, 16, 4, 1), dq=Tiles(32, 16, 4, 1))
