"""Log-probabilities for OpenAI's `logprobs` fields: computed from the model's logits, shaped
as the chat and completions APIs return them.

A token's log-probability is taken from the model's own distribution (log-softmax of
the raw logits, before temperature, penalties, bias or top-k/top-p), as vLLM reports
them: the figure an evaluation harness needs, whatever the sampling settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from chatbaker_megatron.data.tokenizer.load import ChatBakerTokenizer


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # the k most likely tokens, most likely first


def scored(logits: torch.Tensor, tokens: list[int], k: int) -> list[TokenLogprob]:
    """Row i of logits [rows, vocab] scores tokens[i]; with its `k` most likely tokens."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs[torch.arange(len(tokens)), torch.tensor(tokens)].tolist()
    if k:
        values, ids = torch.topk(logprobs, k, dim=-1)
        tops = [tuple(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        tops = [()] * len(tokens)
    return [TokenLogprob(t, c, top) for t, c, top in zip(tokens, chosen, tops)]


@cache
def _byte_of_char() -> dict[str, int]:
    """The inverse of byte-level BPE's byte -> printable character map (GPT-2's)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def token_bytes(tokenizer: ChatBakerTokenizer, token: int) -> bytes:
    """The bytes a token stands for (a special token: its text in UTF-8)."""
    piece = tokenizer.backend.id_to_token(token) or ""
    table = _byte_of_char()
    if piece and all(ch in table for ch in piece) and tokenizer.decode([token]) != piece:
        return bytes(table[ch] for ch in piece)
    return piece.encode("utf-8")


def token_text(tokenizer: ChatBakerTokenizer, token: int) -> str:
    return token_bytes(tokenizer, token).decode("utf-8", errors="replace")


def chat_logprobs(
    tokenizer: ChatBakerTokenizer, scores: list[TokenLogprob]
) -> dict[str, list[dict[str, Any]]]:
    """`choices[i].logprobs` of a chat completion."""

    def entry(token: int, logprob: float) -> dict[str, Any]:
        raw = token_bytes(tokenizer, token)
        text = raw.decode("utf-8", errors="replace")
        return {"token": text, "logprob": logprob, "bytes": list(raw)}

    return {
        "content": [
            {**entry(s.token, s.logprob), "top_logprobs": [entry(t, lp) for t, lp in s.top]}
            for s in scores
        ]
    }


def completion_logprobs(
    tokenizer: ChatBakerTokenizer, scores: list[TokenLogprob | None], tokens: list[int]
) -> dict[str, list[Any]]:
    """`choices[i].logprobs` of a completion: `tokens`, `token_logprobs`, `top_logprobs`
    (a dict per token; None where a token has no score, the first echoed one) and
    `text_offset`."""
    texts = [token_text(tokenizer, t) for t in tokens]
    offsets, at = [], 0
    for text in texts:
        offsets.append(at)
        at += len(text)
    return {
        "tokens": texts,
        "token_logprobs": [None if s is None else s.logprob for s in scores],
        "top_logprobs": [
            None if s is None else {token_text(tokenizer, t): lp for t, lp in s.top} for s in scores
        ],
        "text_offset": offsets,
    }
