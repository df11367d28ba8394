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
    resolved = dispatch.resolve_kernels(KernelsConfig(), torch.bfloat16)
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


def test_auto_takes_the_runs_dtype_into_account(monkeypatch):
    """flash-attn computes in fp16/bf16 only: an fp32 run on a GPU with flash-attn and
    no Transformer Engine gets the next backend, and asking for flash is an error."""
    _pretend_installed(monkeypatch, cuda=True, modules={"flash_attn", "triton"})
    assert dispatch.resolve_kernels(KernelsConfig(), torch.bfloat16).attention == "flash"
    assert dispatch.resolve_kernels(KernelsConfig(), torch.float32).attention == "triton"
    with pytest.raises(KernelBackendError, match=r"does not compute in torch\.float32"):
        dispatch.resolve_kernels(KernelsConfig(attention="flash"), torch.float32)


def test_a_library_that_fails_to_import_is_not_available(monkeypatch, tmp_path, caplog):
    """Found by find_spec but broken (a TE built for another CUDA): not picked by `auto`."""
    (tmp_path / "broken_kernels_lib.py").write_text("raise OSError('libcudart.so.12: not found')")
    monkeypatch.syspath_prepend(str(tmp_path))
    dispatch._installed.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=dispatch.__name__):
            assert dispatch._installed("broken_kernels_lib") is False
        assert "broken_kernels_lib is installed but does not import" in caplog.text
        assert "libcudart.so.12" in caplog.text
        assert dispatch._installed("json") is True
    finally:
        dispatch._installed.cache_clear()


def test_fused_ops_follow_what_imports(monkeypatch):
    _pretend_installed(monkeypatch, cuda=True, modules={"transformer_engine"})
    assert dispatch.fused_ops() == {
        "bias_activation_fusion": True,
        "apply_rope_fusion": True,  # Transformer Engine's kernel
        "gradient_accumulation_fusion": False,  # apex's fused_weight_gradient_mlp_cuda
    }
    _pretend_installed(monkeypatch, cuda=False, modules={"transformer_engine"})
    assert not any(dispatch.fused_ops().values())


# megatron checks apply_rope_fusion against a real Transformer Engine (absent here),
# so the RoPE fusion is left out of the config built below.
@pytest.mark.parametrize(
    ("modules", "wgrad"), [({"fused_weight_gradient_mlp_cuda"}, True), (set(), False)]
)
def test_the_model_config_on_a_gpu_machine(monkeypatch, modules, wgrad):
    """The TransformerConfig a GPU run builds: the fused ops where their kernels import,
    every setting given once (the CPU suite never builds this config otherwise)."""
    from chatbaker_megatron import platform
    from chatbaker_megatron.config.parallel import ParallelConfig
    from chatbaker_megatron.model.llama import transformer_config
    from tests.support.tiny_model import TINY_MODEL

    _pretend_installed(monkeypatch, cuda=True, modules=modules)
    monkeypatch.setattr(platform, "megatron_config_overrides", lambda: {})
    config = transformer_config(TINY_MODEL, ParallelConfig(), params_dtype=torch.bfloat16)
    assert config.bias_activation_fusion is True
    assert config.apply_rope_fusion is False
    assert config.gradient_accumulation_fusion is wgrad
