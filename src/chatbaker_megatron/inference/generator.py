"""The generation loop over any backend: KV-cached decoding, stop conditions, streamed text."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from chatbaker_megatron.data.tokenizer.load import ChatBakerTokenizer
from chatbaker_megatron.inference.backends import Backend
from chatbaker_megatron.inference.sampling import SamplingConfig, next_token


@dataclass
class Generation:
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)  # as generated, the stop token included
    text: str = ""  # the reply: special tokens dropped, cut before a stop string
    stop_reason: str = "length"  # stop_token | stop_string | length


class TextStream:
    """Turns tokens into reply text as they come, cut at the first stop string.

    Text is handed to `on_text` only when it is final: byte-level BPE splits
    a Korean syllable (3 UTF-8 bytes) over tokens, so text ending in an
    incomplete character (decoded as U+FFFD) waits, and so does a tail that
    could be the start of a stop string.
    """

    def __init__(
        self,
        tokenizer: ChatBakerTokenizer,
        stop_strings: tuple[str, ...],
        on_text: Callable[[str], None] | None,
    ) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.on_text = on_text
        self.ids: list[int] = []
        self.emitted = 0
        self.text = ""

    def _emit(self, end: int) -> None:
        if end > self.emitted:
            if self.on_text:
                self.on_text(self.text[self.emitted : end])
            self.emitted = end

    def _held_back(self, text: str) -> int:
        """Length of the longest tail of `text` that begins some stop string."""
        return max(
            (n for s in self.stop_strings for n in range(1, len(s)) if text.endswith(s[:n])),
            default=0,
        )

    def push(self, token: int) -> bool:
        """Add a token; True when the reply ended at a stop string."""
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cuts = [self.text.find(s) for s in self.stop_strings if s in self.text]
        if cuts:
            self.text = self.text[: min(cuts)]
            self._emit(len(self.text))
            return True
        if not self.text.endswith("\ufffd"):
            self._emit(len(self.text) - self._held_back(self.text))
        return False

    def finish(self) -> str:
        self._emit(len(self.text))
        return self.text


class Generator:
    """Generates from one backend, reusing its KV cache across calls for a shared prompt prefix."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.tokenizer = backend.tokenizer
        self._cached: list[int] = []  # the tokens whose keys/values the backend holds

    def _prefill(self, prompt: list[int]) -> torch.Tensor:
        common = 0
        for cached, new in zip(self._cached, prompt):
            if cached != new:
                break
            common += 1
        # At least the last prompt token runs, to get the logits that follow it.
        start = min(common, len(prompt) - 1)
        logits = self.backend.forward(prompt[start:], start)
        self._cached = list(prompt)
        return logits

    def generate(
        self,
        prompt_ids: list[int],
        sampling: SamplingConfig,
        *,
        stop_ids: tuple[int, ...] = (),
        stop_strings: tuple[str, ...] = (),
        on_text: Callable[[str], None] | None = None,
    ) -> Generation:
        """Generate after `prompt_ids` until eos (or a stop id / string) or the token budget.

        `on_text` receives the reply text as it grows (for streaming).
        """
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        room = self.backend.max_length - len(prompt_ids)
        if room < 1:
            raise ValueError(
                f"the prompt has {len(prompt_ids)} tokens; the model attends over "
                f"{self.backend.max_length} positions, so nothing can be generated"
            )
        draws = torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None
        stops = {self.tokenizer.eos_id, *stop_ids}
        result = Generation(prompt_ids=list(prompt_ids))
        stream = TextStream(self.tokenizer, stop_strings, on_text)
        logits = self._prefill(list(prompt_ids))
        for step in range(min(sampling.max_new_tokens, room)):
            token = next_token(logits, self._cached, sampling, draws)
            result.token_ids.append(token)
            if token in stops:
                result.stop_reason = "stop_token"
                break
            if stream.push(token):
                result.stop_reason = "stop_string"
                break
            if step + 1 < min(sampling.max_new_tokens, room):
                logits = self.backend.forward([token], len(self._cached))
                self._cached.append(token)
        result.text = stream.finish()
        return result
