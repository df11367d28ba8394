"""The KV cache goes to the model under the keyword its forward takes, on any transformers.

transformers renamed `past_key_values` to `cache` (and its decoder layers took
`past_key_value` in 4.x); a cache passed under another name lands in **kwargs
unused, and every token is decoded without its context. Each spelling is pinned
here with decoder layers that take one of them, through the batched engine's
decoder, which calls the model's layers in turn."""

from __future__ import annotations

import pytest
import torch

from chatbaker_megatron.inference.backends import cache_keyword
from chatbaker_megatron.serve.batching import BatchedDecoder

VOCAB, HIDDEN = 7, 4


class _Recorder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict] = []


class NewSpelling(_Recorder):
    def forward(self, hidden_states, attention_mask=None, position_ids=None, cache=None,
                use_cache=False, position_embeddings=None, **kwargs):  # fmt: skip
        self.calls.append({"cache": cache, **kwargs})
        return hidden_states


class OldSpelling(_Recorder):
    def forward(self, hidden_states, attention_mask=None, position_ids=None,
                past_key_values=None, use_cache=False, position_embeddings=None,
                **kwargs):  # fmt: skip
        self.calls.append({"past_key_values": past_key_values, **kwargs})
        return hidden_states


class OlderSpelling(_Recorder):
    def forward(self, hidden_states, attention_mask=None, position_ids=None,
                past_key_value=None, use_cache=False, position_embeddings=None,
                **kwargs):  # fmt: skip
        self.calls.append({"past_key_value": past_key_value, **kwargs})
        return hidden_states


class _Rotary(torch.nn.Module):
    def forward(self, hidden: torch.Tensor, position_ids: torch.Tensor):
        return hidden, hidden


class _Body(torch.nn.Module):
    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(VOCAB, HIDDEN)
        self.rotary_emb = _Rotary()
        self.layers = torch.nn.ModuleList([layer])
        self.norm = torch.nn.Identity()


class _CausalLM(torch.nn.Module):
    """The parts of LlamaForCausalLM the decoder calls, around one recording layer."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.model = _Body(layer)
        self.lm_head = torch.nn.Linear(HIDDEN, VOCAB)


@pytest.mark.parametrize(
    ("layer", "keyword"),
    [(NewSpelling, "cache"), (OldSpelling, "past_key_values"), (OlderSpelling, "past_key_value")],
)
def test_the_cache_goes_under_the_keyword_the_layer_takes(layer, keyword):
    recorder = layer()
    assert cache_keyword(recorder) == keyword
    decoder = BatchedDecoder(_CausalLM(recorder))
    decoder.add([[1, 2, 3]])
    (call,) = recorder.calls
    assert call[keyword] is not None, "the cache was not passed"
    assert set(call) == {keyword}, f"something landed in **kwargs: {sorted(call)}"


def test_installed_transformers_llama_and_its_layers_take_one_of_them():
    import inspect

    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaForCausalLM

    for module in (LlamaForCausalLM, LlamaDecoderLayer):
        parameters = inspect.signature(module.forward).parameters
        assert cache_keyword(module.__new__(module)) in parameters


def test_a_model_taking_neither_is_refused():
    class Neither(torch.nn.Module):
        def forward(self, input_ids=None, **kwargs):
            return input_ids

    with pytest.raises(TypeError, match="takes none of `cache`, `past_key_values`"):
        cache_keyword(Neither())
