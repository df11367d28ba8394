"""The KV cache goes to the model under the keyword its forward takes, on any transformers.

transformers renamed `past_key_values` to `cache`; a cache passed under the other name lands
in **kwargs unused, and every token is decoded without its context. Both spellings are pinned
here with models that take one or the other, through the batched engine's decoder."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from chatbaker_megatron.inference.backends import cache_keyword
from chatbaker_megatron.serve.batching import BatchedDecoder

VOCAB = 7


class _Recorder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[dict] = []

    def _logits(self, input_ids: torch.Tensor, kwargs: dict) -> SimpleNamespace:
        self.calls.append(kwargs)
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, VOCAB))


class NewSpelling(_Recorder):
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                logits_to_keep=0, **kwargs):  # fmt: skip
        return self._logits(input_ids, {"cache": cache, **kwargs})


class OldSpelling(_Recorder):
    def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                past_key_values=None, logits_to_keep=0, **kwargs):  # fmt: skip
        return self._logits(input_ids, {"past_key_values": past_key_values, **kwargs})


@pytest.mark.parametrize(
    ("model", "keyword"), [(NewSpelling, "cache"), (OldSpelling, "past_key_values")]
)
def test_the_cache_goes_under_the_keyword_the_model_takes(model, keyword):
    module = model()
    assert cache_keyword(module) == keyword
    decoder = BatchedDecoder(module)
    decoder.add([[1, 2, 3]])
    (call,) = module.calls
    assert call[keyword] is not None, "the cache was not passed"
    assert set(call) == {keyword}, f"something landed in **kwargs: {sorted(call)}"


def test_installed_transformers_llama_takes_one_of_them():
    import inspect

    from transformers import LlamaForCausalLM

    parameters = inspect.signature(LlamaForCausalLM.forward).parameters
    assert cache_keyword(LlamaForCausalLM.__new__(LlamaForCausalLM)) in parameters


def test_a_model_taking_neither_is_refused():
    class Neither(torch.nn.Module):
        def forward(self, input_ids=None, **kwargs):
            return input_ids

    with pytest.raises(TypeError, match="neither `cache` nor `past_key_values`"):
        cache_keyword(Neither())
