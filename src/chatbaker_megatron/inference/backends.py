"""Models that generate: our megatron GPTModel from a training checkpoint, or an HF folder.

Both keep a KV cache and expose one call, `forward(ids, start)`: run `ids`
at positions start, start+1, ... on top of the cached positions < start and
return the logits of the last one. Starting below the cached length
overwrites the cache from there, so a chat turn only runs the tokens that
changed since the last turn.

Megatron: megatron-core's own KV cache (`StaticInferenceContext`) on
GPTModel, in one process at TP=1, PP=1: megatron hands core attention the
cached keys (longer than the new queries) and the torch attention backend
aligns the causal mask to the end (model/dispatch.py).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from chatbaker_megatron.data.templates import ChatTemplate, load_template, read_template
from chatbaker_megatron.data.tokenizer.load import ChatBakerTokenizer, load_tokenizer

if TYPE_CHECKING:
    from transformers import DynamicCache


def cache_keyword(model: torch.nn.Module) -> str:
    """The keyword the model's (or a decoder layer's) forward takes its KV cache by:
    `cache` (transformers 5.x from 5.2x), `past_key_values` (earlier) or, for a layer of
    transformers 4.x, `past_key_value`. A cache passed under another name would land in
    **kwargs and be ignored, and every token would be decoded without context."""
    parameters = inspect.signature(type(model).forward).parameters
    for name in ("cache", "past_key_values", "past_key_value"):
        if name in parameters:
            return name
    raise TypeError(
        f"{type(model).__name__}.forward takes none of `cache`, `past_key_values`, "
        "`past_key_value`: "
        "this transformers version is not supported"
    )


class Backend(Protocol):
    tokenizer: ChatBakerTokenizer
    max_length: int  # positions the model can attend over
    template: ChatTemplate | None  # the chat template the model was fine-tuned with, if known

    def forward(self, ids: list[int], start: int) -> torch.Tensor:
        """Logits [vocab] after `ids` placed at positions start.. (the cache holds < start)."""
        ...


class MegatronBackend:
    """A GPTModel (TP=1, PP=1) loaded from a training checkpoint, with megatron's KV cache."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: ChatBakerTokenizer,
        max_length: int,
        template: ChatTemplate | None = None,
    ) -> None:
        from megatron.core.inference.contexts import StaticInferenceContext

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.template = template
        self.device = next(model.parameters()).device
        self.context = StaticInferenceContext(max_batch_size=1, max_sequence_length=max_length)

    @torch.no_grad()
    def forward(self, ids: list[int], start: int) -> torch.Tensor:
        end = start + len(ids)
        if not ids or end > self.max_length:
            raise ValueError(f"positions {start}..{end} exceed the model's {self.max_length}")
        self.context.sequence_len_offset = start
        tokens = torch.tensor([ids], dtype=torch.long, device=self.device)
        positions = torch.arange(start, end, device=self.device)[None]
        logits = self.model(tokens, positions, None, inference_context=self.context)
        # The output layer is padded past the tokenizer's vocabulary.
        return logits[0, -1, : self.tokenizer.vocab_size]


class HFFolder:
    """An HF model folder's tokenizer, context length and chat template, weights not loaded
    (what a server's HTTP side needs when the model runs in another process)."""

    def __init__(self, hf_dir: str | Path) -> None:
        hf_dir = Path(hf_dir).expanduser()
        config = hf_dir / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{hf_dir}: no config.json (not a Hugging Face model folder)")
        self.path = hf_dir
        self.tokenizer = load_tokenizer(hf_dir)
        self.max_length = int(json.loads(config.read_text())["max_position_embeddings"])
        self.template = read_template(hf_dir)


class HFBackend(HFFolder):
    """A transformers LlamaForCausalLM folder, with transformers' DynamicCache."""

    def __init__(self, hf_dir: str | Path, dtype: torch.dtype | None = None) -> None:
        from transformers import LlamaForCausalLM

        from chatbaker_megatron import platform

        super().__init__(hf_dir)
        hf_dir = self.path
        plat = platform.detect()
        self.device = plat.device
        dtype = dtype or plat.inference_dtype
        model = LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=dtype)
        # transformers' `to` is a functools.wraps wrapper: typeshed's type of it drops the bound self.
        self.model = model.to(self.device).eval()  # type: ignore[arg-type]
        self._cache: DynamicCache | None = None
        self._cache_keyword = cache_keyword(self.model)

    @torch.no_grad()
    def forward(self, ids: list[int], start: int) -> torch.Tensor:
        from transformers import DynamicCache

        end = start + len(ids)
        if not ids or end > self.max_length:
            raise ValueError(f"positions {start}..{end} exceed the model's {self.max_length}")
        if self._cache is None or start == 0:
            self._cache = DynamicCache(config=self.model.config)
        elif self._cache.get_seq_length() > start:
            # A negative count removes that many positions (transformers 4.x and 5.x alike).
            self._cache.crop(start - self._cache.get_seq_length())
        tokens = torch.tensor([ids], dtype=torch.long, device=self.device)
        positions = torch.arange(start, end, device=self.device)[None]
        out = self.model(
            input_ids=tokens,
            position_ids=positions,
            use_cache=True,
            **{self._cache_keyword: self._cache},
        )
        return out.logits[0, -1]


def load_megatron_backend(
    checkpoint: str | Path,
    tokenizer_dir: str | Path | None = None,
    dtype: torch.dtype | None = None,
) -> MegatronBackend:
    """Our model from a training checkpoint (any saved TP/PP), in this process at TP=1, PP=1.

    `dtype` defaults to the platform's inference dtype (bf16 on GPU, fp32 on CPU).
    """
    from chatbaker_megatron import platform
    from chatbaker_megatron.checkpoint.reader import MegatronCheckpoint
    from chatbaker_megatron.checkpoint.run_config import run_chat_template, run_tokenizer_dir
    from chatbaker_megatron.checkpoint.tp1_model import load_tp1_model
    from chatbaker_megatron.model.dispatch import kv_cache_kernels

    dtype = dtype or platform.detect().inference_dtype
    source = MegatronCheckpoint(checkpoint)
    tok_dir = (
        Path(tokenizer_dir) if tokenizer_dir else run_tokenizer_dir(source.config, str(source.path))
    )
    tokenizer = load_tokenizer(tok_dir)
    # Kernels are the serving machine's choice, whatever the training machine had.
    model = load_tp1_model(source, tokenizer.vocab_size, dtype, kv_cache_kernels(dtype))
    template_name = run_chat_template(source.config)
    template = load_template(template_name) if template_name else None
    return MegatronBackend(model, tokenizer, source.model.max_position_embeddings, template)
