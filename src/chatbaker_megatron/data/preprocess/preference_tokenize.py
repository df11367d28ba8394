"""Preference pairs -> token ids + reply flags for the chosen and the rejected conversation.

Each side is the prompt plus one assistant reply, rendered with the chat
template and tokenised exactly as SFT does (sft_tokenize): the flags mark the
final reply's tokens and its eos only (earlier assistant turns of the prompt
are context, not targets). Both sides share the prompt's tokens.

Training puts both sides of a pair in one sequence of `seq_length` tokens
(datasets/preference.py), so a pair fits when its two lengths add up to at
most `seq_length`. One that does not is a BadRecord naming the lengths; a
reply is never cut.

In the indexed dataset a pair is one document of four sequences: chosen ids,
chosen flags, rejected ids, rejected flags.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chatbaker_megatron.data.corpus import BadRecord, LineChunk
from chatbaker_megatron.data.preprocess.encode_worker import (
    EncodedChunk,
    RecordChunk,
    _flatten,
    _records,
    chat_worker,
)
from chatbaker_megatron.data.preprocess.preference_pairs import PreferencePair, parse_preference
from chatbaker_megatron.data.preprocess.sft_tokenize import (
    TokenizedConversation,
    tokenize_conversations,
)
from chatbaker_megatron.data.templates import ChatTemplate, Message
from chatbaker_megatron.data.tokenizer.load import ChatBakerTokenizer

SEQS_PER_PAIR = 4


@dataclass(frozen=True)
class TokenizedPair:
    chosen: TokenizedConversation
    rejected: TokenizedConversation
    prompt_tokens: int

    @property
    def length(self) -> int:
        """Tokens of the training sequence that holds both sides."""
        return len(self.chosen.ids) + len(self.rejected.ids)


def _final_reply(conversation: TokenizedConversation) -> tuple[TokenizedConversation, int]:
    """Flags on the last reply only, and where that reply starts (the prompt's length)."""
    flags = conversation.targets
    start = len(flags)
    while start > 0 and flags[start - 1]:
        start -= 1
    final = np.zeros_like(flags)
    final[start:] = True
    return TokenizedConversation(conversation.ids, final), start


def _pair(chosen: TokenizedConversation, rejected: TokenizedConversation, seq_length: int):
    chosen, prompt = _final_reply(chosen)
    rejected, rejected_prompt = _final_reply(rejected)
    if prompt != rejected_prompt or not np.array_equal(
        chosen.ids[:prompt], rejected.ids[:rejected_prompt]
    ):
        raise BadRecord(
            "template-boundary",
            "the prompt tokenises differently before the chosen and the rejected reply; "
            "the chat template's assistant_prefix must end where a token ends",
        )
    pair = TokenizedPair(chosen, rejected, prompt)
    if 2 * prompt >= seq_length:
        raise BadRecord(
            "prompt-too-long",
            f"the prompt is {prompt} tokens: twice that (it opens both sides of the pair) "
            f"leaves no room for the replies in --seq-length={seq_length}",
        )
    if pair.length > seq_length:
        raise BadRecord(
            "pair-too-long",
            f"chosen ({len(chosen.ids)} tokens) + rejected ({len(rejected.ids)} tokens) = "
            f"{pair.length} > --seq-length={seq_length}, prompt {prompt} tokens; replies are "
            "never cut: raise the sequence length or shorten the pair",
        )
    return pair


def tokenize_pairs(
    tokenizer: ChatBakerTokenizer,
    template: ChatTemplate,
    pairs: list[PreferencePair],
    seq_length: int,
) -> list[TokenizedPair | BadRecord]:
    """Tokenise a batch of pairs (one encode_batch call); a bad pair comes back as its BadRecord."""
    conversations = [
        [*pair.prompt, Message("assistant", reply)]
        for pair in pairs
        for reply in (pair.chosen, pair.rejected)
    ]
    tokenized = tokenize_conversations(tokenizer, template, conversations)
    results: list[TokenizedPair | BadRecord] = []
    for chosen, rejected in zip(tokenized[0::2], tokenized[1::2]):
        try:
            if isinstance(chosen, BadRecord):
                raise chosen
            if isinstance(rejected, BadRecord):
                raise rejected
            results.append(_pair(chosen, rejected, seq_length))
        except BadRecord as bad:
            results.append(bad)
    return results


def encode_preference_chunk(
    chunk: LineChunk | RecordChunk, dtype: str, seq_length: int
) -> EncodedChunk:
    """Pairs: per document the chosen ids and flags, then the rejected ids and flags."""
    tokenizer, template = chat_worker()
    pairs, positions = [], []
    bad: list[tuple[int, str, str, str]] = []  # (position, location, kind, detail)
    for position, (location, record) in enumerate(_records(chunk)):
        try:
            if isinstance(record, BadRecord):
                raise record
            pairs.append(parse_preference(record))
            positions.append((position, location))
        except BadRecord as err:
            bad.append((position, location, err.kind, err.detail))
    sequences, targets = [], 0
    for (position, location), result in zip(
        positions, tokenize_pairs(tokenizer, template, pairs, seq_length)
    ):
        if isinstance(result, BadRecord):
            bad.append((position, location, result.kind, result.detail))
            continue
        for side in (result.chosen, result.rejected):
            sequences += [side.ids, side.targets]
            targets += int(side.targets.sum())
    tokens, lengths = _flatten(sequences, dtype)
    chars = sum(len(m.content) for pair in pairs for m in pair.prompt) + sum(
        len(pair.chosen) + len(pair.rejected) for pair in pairs
    )
    return EncodedChunk(
        tokens,
        lengths,
        SEQS_PER_PAIR,
        [entry[1:] for entry in sorted(bad)],  # in input order: --on-error fail names the first
        chars=chars,
        target_tokens=targets,
    )
