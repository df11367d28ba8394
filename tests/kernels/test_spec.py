"""The layer spec's norm and core-attention builders for each kernel backend."""

from __future__ import annotations

import functools

import pytest

from chatbaker_megatron.model import spec
from chatbaker_megatron.model.dispatch import KernelBackendError
from chatbaker_megatron.model.layers import CoreAttention, RMSNorm


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_spec_builders_carry_the_backend(backend):
    norm = spec.norm_spec(backend)
    attention = spec.core_attention_spec(backend)
    assert isinstance(norm, functools.partial) and norm.func is RMSNorm
    assert norm.keywords == {"backend": backend}
    assert isinstance(attention, functools.partial) and attention.func is CoreAttention
    assert attention.keywords == {"backend": backend}


def test_spec_builders_reject_unknown_backends():
    with pytest.raises(KernelBackendError):
        spec.norm_spec("flash")
    with pytest.raises(KernelBackendError):
        spec.core_attention_spec("auto")
