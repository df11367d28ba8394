"""Every kernel backend available here against the float64 reference: forward and all gradients.

Backends come from the dispatcher's tables, so a GPU machine with apex,
flash-attn or the CUDA extension runs the same grid on them; here they skip
with the reason the dispatcher gives. (`te` runs as megatron's TE modules and
is tested in test_gpu_only.py.) Tolerances per dtype: reference.TOLERANCE.
"""

from __future__ import annotations

import pytest
import torch

from chatbaker_megatron.model import dispatch
from tests.kernels import reference
from tests.support.add_norm import add_rms_norm_of

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
EPS = 1e-6


def _backend_params(table: dict[str, dispatch.Backend]) -> list:
    params = []
    for name, backend in table.items():
        if backend.load is None:
            continue
        marks = (
            []
            if backend.available()
            else [pytest.mark.skip(reason=f"{name} needs {backend.requires}")]
        )
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def _leaf(
    shape: tuple[int, ...], dtype: torch.dtype, scale: float = 1.0, offset: float = 0.0
) -> torch.Tensor:
    return (torch.randn(shape, device=DEVICE) * scale + offset).to(dtype).requires_grad_()


def _float64_copies(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The same (already rounded) values in float64, as fresh leaves."""
    return [t.detach().double().requires_grad_() for t in tensors]


# Hidden sizes: tiny, not powers of two, one past a power of two; leading dims of any rank.
NORM_SHAPES = [(1, 8), (4, 3, 48), (7, 100), (2, 5, 257)]


@pytest.mark.parametrize("backend", _backend_params(dispatch.NORM_BACKENDS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("weight_fp32", [False, True], ids=["w=x", "w=fp32"])
@pytest.mark.parametrize("shape", NORM_SHAPES, ids=str)
def test_rms_norm_matches_reference(backend, dtype, weight_fp32, shape, record_error):
    torch.manual_seed(0)
    x = _leaf(shape, dtype)
    weight = _leaf(shape[-1:], torch.float32 if weight_fp32 else dtype, scale=0.1, offset=1.0)
    y = dispatch.norm_fn(backend)(x, weight, EPS)
    dy = torch.randn_like(y)
    y.backward(dy)

    x64, w64 = _float64_copies(x, weight)
    y64 = reference.rms_norm(x64, w64, EPS)
    y64.backward(dy.double())

    assert y.dtype == dtype
    assert weight.grad.dtype == weight.dtype
    for quantity, actual, expected, tol in [
        ("y", y, y64, dtype),
        ("dx", x.grad, x64.grad, dtype),
        ("dweight", weight.grad, w64.grad, weight.dtype),
    ]:
        reference.assert_matches(actual, expected, tol, f"{backend} rms_norm {quantity}")
        record_error("rms_norm", quantity, backend, dtype, actual, expected)


# add+RMSNorm is a chatbaker_kernels op the model does not use (docs/kernels.md):
# its fused kernels, with torch's add-then-norm as the baseline row.
ADD_NORM_BACKENDS = {name: dispatch.NORM_BACKENDS[name] for name in ("cuda", "triton", "torch")}


@pytest.mark.parametrize("backend", _backend_params(ADD_NORM_BACKENDS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", NORM_SHAPES, ids=str)
def test_add_rms_norm_matches_reference(backend, dtype, shape, record_error):
    torch.manual_seed(0)
    x, residual = _leaf(shape, dtype), _leaf(shape, dtype)
    weight = _leaf(shape[-1:], dtype, scale=0.1, offset=1.0)
    y, h = add_rms_norm_of(backend)(x, residual, weight, EPS)
    dy, dh = torch.randn_like(y), torch.randn_like(h)
    ((y.float() * dy).sum() + (h.float() * dh).sum()).backward()

    x64, r64, w64 = _float64_copies(x, residual, weight)
    h64 = x64 + r64
    y64 = reference.rms_norm(h64, w64, EPS)
    ((y64 * dy.double()).sum() + (h64 * dh.double()).sum()).backward()

    for quantity, actual, expected in [
        ("y", y, y64),
        ("sum", h, h64),
        ("dx", x.grad, x64.grad),
        ("dresidual", residual.grad, r64.grad),
        ("dweight", weight.grad, w64.grad),
    ]:
        reference.assert_matches(actual, expected, dtype, f"{backend} add_rms_norm {quantity}")
        record_error("add_rms_norm", quantity, backend, dtype, actual, expected)


# (batch, seq, query heads, kv heads, head dim): a single token, lengths that are
# not multiples of the tile (the interpreter's tiles are 16/32 tokens), exact
# multiples, GQA 2:1 and 4:1, head dims 16..128 and one not a power of two.
DENSE_CASES = [
    (1, 1, 1, 1, 16),
    (2, 37, 4, 2, 16),
    (1, 70, 4, 1, 32),
    (1, 64, 2, 2, 32),
    (2, 19, 2, 1, 64),
    (1, 5, 2, 1, 128),
    (1, 20, 2, 1, 40),
]
# Packed documents of uneven lengths (cu_seqlens), an empty one among them.
VARLEN_CASES = [
    ([0, 5, 40, 41, 63], 4, 2, 32),
    ([0, 17, 17, 50], 2, 1, 16),
    ([0, 33], 2, 2, 64),
]


def _check_attention(backend, dtype, q, k, v, cu_seqlens, record_error):
    if backend == "flash" and dtype == torch.float32:
        pytest.skip("flash-attn supports fp16 and bf16 only")
    scale = q.shape[-1] ** -0.5
    out = dispatch.attention_fn(backend)(q, k, v, softmax_scale=scale, cu_seqlens=cu_seqlens)
    do = torch.randn_like(out)
    out.backward(do)

    q64, k64, v64 = _float64_copies(q, k, v)
    out64 = reference.causal_attention(q64, k64, v64, scale, cu_seqlens)
    out64.backward(do.double())

    assert out.dtype == dtype
    for quantity, actual, expected in [
        ("out", out, out64),
        ("dq", q.grad, q64.grad),
        ("dk", k.grad, k64.grad),
        ("dv", v.grad, v64.grad),
    ]:
        reference.assert_matches(actual, expected, dtype, f"{backend} attention {quantity}")
        record_error("attention", quantity, backend, dtype, actual, expected)


@pytest.mark.parametrize("backend", _backend_params(dispatch.ATTENTION_BACKENDS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", DENSE_CASES, ids=str)
def test_attention_matches_reference(backend, dtype, case, record_error):
    torch.manual_seed(0)
    b, s, hq, hkv, d = case
    q = _leaf((b, s, hq, d), dtype)
    k, v = _leaf((b, s, hkv, d), dtype), _leaf((b, s, hkv, d), dtype)
    _check_attention(backend, dtype, q, k, v, None, record_error)


@pytest.mark.parametrize("backend", _backend_params(dispatch.ATTENTION_BACKENDS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", VARLEN_CASES, ids=str)
def test_varlen_attention_matches_reference(backend, dtype, case, record_error):
    torch.manual_seed(0)
    offsets, hq, hkv, d = case
    cu_seqlens = torch.tensor(offsets, dtype=torch.int32, device=DEVICE)
    t = offsets[-1]
    q, k, v = _leaf((t, hq, d), dtype), _leaf((t, hkv, d), dtype), _leaf((t, hkv, d), dtype)
    _check_attention(backend, dtype, q, k, v, cu_seqlens, record_error)


@pytest.mark.parametrize("backend", _backend_params(dispatch.ATTENTION_BACKENDS))
def test_varlen_documents_do_not_see_each_other(backend):
    """Changing one document's tokens changes no other document's output."""
    torch.manual_seed(0)
    dtype = torch.float32 if backend != "flash" else torch.bfloat16
    cu_seqlens = torch.tensor([0, 9, 30, 44], dtype=torch.int32, device=DEVICE)
    q, k, v = (torch.randn(44, 2, 16, device=DEVICE, dtype=dtype) for _ in range(3))
    attention = dispatch.attention_fn(backend)
    before = attention(q, k, v, softmax_scale=0.25, cu_seqlens=cu_seqlens)
    k2, v2 = k.clone(), v.clone()
    k2[9:30] += 1.0
    v2[9:30] -= 1.0
    after = attention(q, k2, v2, softmax_scale=0.25, cu_seqlens=cu_seqlens)
    assert torch.equal(before[:9], after[:9])
    assert torch.equal(before[30:], after[30:])
    assert not torch.equal(before[9:30], after[9:30])
