"""The kernel dispatcher: resolution order, clear errors, and the functional ops it hands out."""

from __future__ import annotations

import logging

import pytest
import torch

from chatbaker_megatron.config.model import KernelsConfig
from chatbaker_megatron.model import dispatch
from chatbaker_megatron.model.dispatch import KernelBackendError


def _pretend_installed(monkeypatch: pytest.MonkeyPatch, cuda: bool, modules: set[str]) -> None:
    """Make the availability checks see this machine instead of the real one."""
    monkeypatch.setattr(dispatch, "_cuda", lambda: cuda)
    monkeypatch.setattr(dispatch, "_installed", lambda name: name in modules)
    monkeypatch.setattr(
        dispatch, "_cuda_extension_built", lambda: "chatbaker_kernels._cuda_rmsnorm" in modules
    )


def test_auto_without_cuda_is_torch(monkeypatch):
    # Even with Triton's interpreter on and every library installed.
    _pretend_installed(
        monkeypatch, cuda=False, modules={"triton", "transformer_engine", "flash_attn", "apex"}
    )
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.resolve_kernels(KernelsConfig()) == dispatch.ResolvedKernels(
        attention="torch", norm="torch"
    )


@pytest.mark.parametrize(
    ("modules", "attention", "norm"),
    [
        (
            {"transformer_engine", "flash_attn", "apex", "fused_layer_norm_cuda", "triton"},
            "te",
            "te",
        ),
        ({"flash_attn", "apex", "fused_layer_norm_cuda", "triton"}, "flash", "apex"),
        ({"apex", "triton", "chatbaker_kernels._cuda_rmsnorm"}, "triton", "cuda"),
        ({"triton"}, "triton", "triton"),
        (set(), "torch", "torch"),
    ],
)
def test_auto_with_cuda_takes_the_most_preferred_available(monkeypatch, modules, attention, norm):
    _pretend_installed(monkeypatch, cuda=True, modules=modules)
    resolved = dispatch.resolve_kernels(KernelsConfig())
    assert resolved == dispatch.ResolvedKernels(attention=attention, norm=norm)


def test_resolution_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger=dispatch.__name__):
        resolved = dispatch.resolve_kernels(KernelsConfig(attention="torch", norm="auto"))
    assert (
        f"attention=torch (configured torch), norm={resolved.norm} (configured auto)" in caplog.text
    )


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (KernelsConfig(attention="cuda"), "no such attention backend"),
        (KernelsConfig(attention="apex"), "no such attention backend"),
        (KernelsConfig(norm="flash"), "no such norm backend"),
        (KernelsConfig(norm="bogus"), "no such norm backend"),
    ],
)
def test_unknown_backend_for_an_op_is_an_error(cfg, message):
    with pytest.raises(KernelBackendError, match=message):
        dispatch.resolve_kernels(cfg)


@pytest.mark.parametrize(
    ("cfg", "needs"),
    [
        (KernelsConfig(attention="te"), "transformer_engine"),
        (KernelsConfig(attention="flash"), "flash-attn"),
        (KernelsConfig(norm="apex"), "fused_layer_norm_cuda"),
        (KernelsConfig(norm="cuda"), "_cuda_rmsnorm extension"),
    ],
)
def test_unavailable_backend_is_an_error_naming_what_it_needs(monkeypatch, cfg, needs):
    _pretend_installed(monkeypatch, cuda=False, modules={"triton"})
    with pytest.raises(KernelBackendError, match="not available on this machine") as raised:
        dispatch.resolve_kernels(cfg)
    assert needs in str(raised.value)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    _pretend_installed(monkeypatch, cuda=False, modules={"triton"})
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    resolved = dispatch.resolve_kernels(KernelsConfig(attention="triton", norm="triton"))
    assert resolved == dispatch.ResolvedKernels(attention="triton", norm="triton")
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(KernelBackendError, match="TRITON_INTERPRET=1"):
        dispatch.resolve_kernels(KernelsConfig(attention="triton"))


def test_te_has_no_functional_op():
    with pytest.raises(KernelBackendError, match="Transformer Engine module"):
        dispatch.norm_fn("te")
    with pytest.raises(KernelBackendError, match="Transformer Engine module"):
        dispatch.attention_fn("te")


def test_functional_lookup_of_unknown_backend_is_an_error():
    with pytest.raises(KernelBackendError, match="no such norm backend"):
        dispatch.norm_fn("flash")


@pytest.mark.parametrize(
    ("cuda", "modules", "dtype", "attention"),
    [
        # TE would be `auto`'s pick on a GPU, but megatron gives it no_mask under a KV cache.
        (True, {"transformer_engine", "flash_attn"}, torch.bfloat16, "flash"),
        (True, {"transformer_engine", "flash_attn"}, torch.float32, "torch"),  # flash: 16-bit only
        (True, {"transformer_engine", "triton"}, torch.bfloat16, "torch"),
        (False, {"flash_attn", "triton"}, torch.float32, "torch"),
    ],
)
def test_kv_cache_kernels_align_the_causal_mask(monkeypatch, cuda, modules, dtype, attention):
    _pretend_installed(monkeypatch, cuda=cuda, modules=modules)
    chosen = dispatch.kv_cache_kernels(dtype)
    assert chosen.attention == attention
    assert chosen.attention not in ("te", "triton")
