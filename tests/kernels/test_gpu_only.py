"""GPU-only kernel tests: the CUDA extension's own paths, Transformer Engine, bf16 at model shapes.

They skip with a reason on machines without CUDA (or without the library they
test). The backend parity grid in test_backends.py also covers flash, apex and
the CUDA extension on a GPU machine.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from chatbaker_megatron.model import dispatch, spec
from tests.kernels import reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU-only: needs CUDA")

HAVE_TE = importlib.util.find_spec("transformer_engine") is not None
needs_te = pytest.mark.skipif(not HAVE_TE, reason="needs transformer_engine")


def _cuda_extension_available() -> bool:
    from chatbaker_kernels import cuda_rmsnorm

    return cuda_rmsnorm.is_available()


needs_cuda_extension = pytest.mark.skipif(
    not torch.cuda.is_available() or not _cuda_extension_available(),
    reason="needs the chatbaker_kernels._cuda_rmsnorm extension (pip install -e . on a CUDA machine)",
)


def _leaf(*shape: int, dtype: torch.dtype, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    return (torch.randn(*shape, device="cuda") * scale + offset).to(dtype).requires_grad_()


def _float64_copies(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().double().requires_grad_() for t in tensors]


@needs_cuda_extension
@pytest.mark.parametrize(
    "n_cols", [8192, 9000, 20000], ids=["registers-8-per-thread", "wide", "wider"]
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_cuda_extension_wide_rows(n_cols, dtype):
    """8192 columns is the widest register path; wider rows take the strided kernel."""
    from chatbaker_kernels import cuda_rmsnorm

    torch.manual_seed(0)
    x, residual = _leaf(6, n_cols, dtype=dtype), _leaf(6, n_cols, dtype=dtype)
    weight = _leaf(n_cols, dtype=torch.float32, scale=0.1, offset=1.0)
    y, h = cuda_rmsnorm.add_rms_norm(x, residual, weight)
    dy, dh = torch.randn_like(y), torch.randn_like(h)
    ((y.float() * dy).sum() + (h.float() * dh).sum()).backward()

    x64, r64, w64 = _float64_copies(x, residual, weight)
    h64 = x64 + r64
    y64 = reference.rms_norm(h64, w64, 1e-6)
    ((y64 * dy.double()).sum() + (h64 * dh.double()).sum()).backward()
    for what, actual, expected, tol in [
        ("y", y, y64, dtype),
        ("sum", h, h64, dtype),
        ("dx", x.grad, x64.grad, dtype),
        ("dweight", weight.grad, w64.grad, torch.float32),
    ]:
        reference.assert_matches(actual, expected, tol, f"cuda rms_norm {what}")


@needs_cuda_extension
def test_cuda_extension_empty_rows_and_bad_dtype():
    from chatbaker_kernels import cuda_rmsnorm

    weight = torch.ones(64, device="cuda", requires_grad=True)
    x = torch.zeros(0, 64, device="cuda", requires_grad=True)
    cuda_rmsnorm.rms_norm(x, weight).sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        cuda_rmsnorm.rms_norm(
            torch.ones(2, 64, device="cuda", dtype=torch.float64), weight.double()
        )


@needs_te
def test_te_spec_entries_are_megatrons_te_modules():
    from megatron.core.extensions.transformer_engine import TEDotProductAttention, TENorm

    assert spec.norm_spec("te") is TENorm
    assert spec.core_attention_spec("te") is TEDotProductAttention


@needs_te
def test_te_rms_norm_bf16():
    import transformer_engine.pytorch as te

    torch.manual_seed(0)
    norm = te.RMSNorm(4096, eps=1e-6, params_dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(4096, device="cuda"))
    x = _leaf(512, 4096, dtype=torch.bfloat16)
    y = norm(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    x64, w64 = _float64_copies(x, norm.weight)
    y64 = reference.rms_norm(x64, w64, 1e-6)
    y64.backward(dy.double())
    reference.assert_matches(y, y64, torch.bfloat16, "te y")
    reference.assert_matches(x.grad, x64.grad, torch.bfloat16, "te dx")
    reference.assert_matches(norm.weight.grad, w64.grad, torch.bfloat16, "te dweight")


@needs_te
@pytest.mark.parametrize("varlen", [False, True], ids=["bshd", "thd"])
def test_te_dot_product_attention_bf16(varlen):
    import transformer_engine.pytorch as te

    torch.manual_seed(0)
    hq, hkv, d = 8, 2, 64
    attention = te.DotProductAttention(
        num_attention_heads=hq,
        kv_channels=d,
        num_gqa_groups=hkv,
        qkv_format="thd" if varlen else "bshd",
        attn_mask_type="padding_causal" if varlen else "causal",
    )
    if varlen:
        offsets = [0, 100, 357, 512]
        cu_seqlens = torch.tensor(offsets, dtype=torch.int32, device="cuda")
        q, k, v = (
            _leaf(512, hq, d, dtype=torch.bfloat16),
            *(_leaf(512, hkv, d, dtype=torch.bfloat16) for _ in range(2)),
        )
        out = attention(
            q, k, v,
            cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
            max_seqlen_q=257, max_seqlen_kv=257,
        )  # fmt: skip
    else:
        cu_seqlens = None
        q, k, v = (
            _leaf(2, 256, hq, d, dtype=torch.bfloat16),
            *(_leaf(2, 256, hkv, d, dtype=torch.bfloat16) for _ in range(2)),
        )
        out = attention(q, k, v)
    out = out.view(q.shape)
    do = torch.randn_like(out)
    out.backward(do)
    q64, k64, v64 = _float64_copies(q, k, v)
    out64 = reference.causal_attention(q64, k64, v64, d**-0.5, cu_seqlens)
    out64.backward(do.double())
    for what, actual, expected in [
        ("out", out, out64),
        ("dq", q.grad, q64.grad),
        ("dk", k.grad, k64.grad),
        ("dv", v.grad, v64.grad),
    ]:
        reference.assert_matches(actual, expected, torch.bfloat16, f"te attention {what}")


# Model-sized bf16 problems (one layer's worth, kept small enough for a float64 reference).
ATTENTION_SHAPES = {
    "1.3B": (1, 1024, 8, 8, 64),
    "7B": (1, 1024, 4, 4, 128),
    "gqa": (1, 1024, 8, 2, 128),
}


def _gpu_attention_backends() -> list[str]:
    return [
        name
        for name, backend in dispatch.ATTENTION_BACKENDS.items()
        if backend.load is not None and name != "torch" and backend.available()
    ]


@pytest.mark.parametrize("shape", list(ATTENTION_SHAPES), ids=str)
def test_bf16_attention_at_model_shapes_is_as_accurate_as_pytorch(shape):
    """Each GPU backend's bf16 error stays within the bf16 tolerance and within
    2x the error of PyTorch's own bf16 attention (plus 1e-3) on the same inputs."""
    torch.manual_seed(0)
    b, s, hq, hkv, d = ATTENTION_SHAPES[shape]
    q = _leaf(b, s, hq, d, dtype=torch.bfloat16)
    k, v = _leaf(b, s, hkv, d, dtype=torch.bfloat16), _leaf(b, s, hkv, d, dtype=torch.bfloat16)
    scale = d**-0.5
    q64, k64, v64 = _float64_copies(q, k, v)
    out64 = reference.causal_attention(q64, k64, v64, scale)
    do = torch.randn_like(out64).to(torch.bfloat16)
    out64.backward(do.double())
    expected = {"out": out64, "dq": q64.grad, "dk": k64.grad, "dv": v64.grad}

    def errors(backend: str) -> dict[str, float]:
        for t in (q, k, v):
            t.grad = None
        out = dispatch.attention_fn(backend)(q, k, v, softmax_scale=scale)
        out.backward(do)
        actual = {"out": out, "dq": q.grad, "dk": k.grad, "dv": v.grad}
        for what in expected:
            reference.assert_matches(
                actual[what], expected[what], torch.bfloat16, f"{backend} {what}"
            )
        return {what: reference.error(actual[what], expected[what]).abs for what in expected}

    baseline = errors("torch")
    for backend in _gpu_attention_backends():
        for what, err in errors(backend).items():
            assert err <= 2 * baseline[what] + 1e-3, (
                f"{backend} {what}: {err:.2e} vs torch {baseline[what]:.2e}"
            )


@pytest.mark.parametrize("hidden", [2048, 4096])
def test_bf16_rms_norm_at_model_shapes(hidden):
    torch.manual_seed(0)
    x = _leaf(4096, hidden, dtype=torch.bfloat16)
    weight = _leaf(hidden, dtype=torch.bfloat16, scale=0.1, offset=1.0)
    x64, w64 = _float64_copies(x, weight)
    y64 = reference.rms_norm(x64, w64, 1e-6)
    dy = torch.randn_like(y64).to(torch.bfloat16)
    y64.backward(dy.double())
    for name, backend in dispatch.NORM_BACKENDS.items():
        if backend.load is None or not backend.available():
            continue
        x.grad = weight.grad = None
        y = dispatch.norm_fn(name)(x, weight, 1e-6)
        y.backward(dy)
        reference.assert_matches(y, y64, torch.bfloat16, f"{name} y")
        reference.assert_matches(x.grad, x64.grad, torch.bfloat16, f"{name} dx")
        reference.assert_matches(weight.grad, w64.grad, torch.bfloat16, f"{name} dweight")
