"""Conversation -> token ids + per-token target flags, with masks that agree with tokenisation.

The whole rendered conversation is tokenised once (exactly as Hugging Face's
apply_chat_template + tokenizer would) and each token is labelled by the
characters it covers: a target when they lie inside an assistant reply span.
A token that straddles a span boundary would make the serving prompt tokenise
differently from training, so it is an error rather than a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chatbaker_megatron.data.corpus import BadRecord
from chatbaker_megatron.data.templates import (
    ChatTemplate,
    Message,
    render_conversation,
    render_prompt,
)
from chatbaker_megatron.data.tokenizer.load import ChatBakerTokenizer


@dataclass(frozen=True)
class TokenizedConversation:
    ids: np.ndarray  # int64 [L]
    targets: np.ndarray  # bool [L]: the token is part of an assistant reply (incl. its eos)


def target_flags(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> np.ndarray:
    """Which tokens (by character offsets) fall inside the target spans; BadRecord on a straddle."""
    bounds = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    starts, ends = bounds[:, 0], bounds[:, 1]
    flags = np.zeros(len(bounds), dtype=bool)
    for begin, end in spans:
        inside = (starts >= begin) & (ends <= end)
        crossing = (starts < end) & (ends > begin) & ~inside
        if crossing.any():
            i = int(np.argmax(crossing))
            raise BadRecord(
                "template-boundary",
                f"token {i} covers characters {starts[i]}..{ends[i]}, across the reply span "
                f"{begin}..{end}; the chat template's assistant_prefix must end where a token ends",
            )
        flags |= inside
    return flags


def tokenize_conversations(
    tokenizer: ChatBakerTokenizer, template: ChatTemplate, conversations: list[list[Message]]
) -> list[TokenizedConversation | BadRecord]:
    """Tokenise a batch (one encode_batch call, parallel in the tokenizers library).

    A conversation whose tokens straddle a reply boundary comes back as its BadRecord.
    """
    rendered = [
        render_conversation(
            template, messages, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token
        )
        for messages in conversations
    ]
    results: list[TokenizedConversation | BadRecord] = []
    for r, e in zip(rendered, tokenizer.encode_with_offsets([r.text for r in rendered])):
        try:
            flags = target_flags(e.offsets, r.targets)
        except BadRecord as bad:
            results.append(bad)
            continue
        results.append(TokenizedConversation(np.asarray(e.ids, dtype=np.int64), flags))
    return results


def tokenize_conversation(
    tokenizer: ChatBakerTokenizer, template: ChatTemplate, messages: list[Message]
) -> TokenizedConversation:
    """One conversation; raises BadRecord when its tokens straddle a reply boundary."""
    (result,) = tokenize_conversations(tokenizer, template, [messages])
    if isinstance(result, BadRecord):
        raise result
    return result


def encode_prompt(
    tokenizer: ChatBakerTokenizer, template: ChatTemplate, messages: list[Message]
) -> list[int]:
    """Token ids of a serving prompt (conversation so far + assistant prefix); generate until eos.

    Equal to the training tokens that precede the reply (tested), so the model
    sees at serving time exactly what it was trained on.
    """
    return tokenizer.encode(
        render_prompt(
            template, messages, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token
        )
    )
