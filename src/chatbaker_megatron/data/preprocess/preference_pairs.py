"""Preference records (JSONL / JSON arrays) -> validated (prompt, chosen, rejected) pairs.

Three layouts are read, each a JSON object per record (other keys such as
"id" are ignored):

- ChatBaker's own: `conversations` is the prompt in the ShareGPT format the
  SFT path reads (`from`/`value` turns, ending with a user turn), `chosen` and
  `rejected` are the two assistant replies (strings, or one `from`/`value` or
  `role`/`content` turn each);
- explicit prompt (TRL's and UltraFeedback's): `prompt` is a string or a
  list of `role`/`content` messages ending with a user turn, `chosen` and
  `rejected` are strings or lists holding one assistant message;
- implicit prompt (Anthropic HH's): `chosen` and `rejected` are whole
  transcripts, message lists or `\\n\\nHuman: ...\\n\\nAssistant: ...` text,
  identical up to their last assistant reply.

Every problem is a BadRecord naming the field, counted or fatal under the
preprocessing's --on-error policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chatbaker_megatron.data.corpus import BadRecord
from chatbaker_megatron.data.preprocess.conversations import check_turn_order, parse_turn
from chatbaker_megatron.data.templates import Message

# Anthropic HH's text transcripts: "\n\nHuman: ...\n\nAssistant: ...".
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass(frozen=True)
class PreferencePair:
    prompt: list[Message]  # [system?] user, assistant, ..., user
    chosen: str
    rejected: str


def _hh_transcript(text: str, key: str) -> list[Message]:
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise BadRecord(
            "bad-transcript",
            f"{key!r} is a string that does not start with '\\n\\nHuman: ' "
            "(an Anthropic HH transcript)",
        )
    messages = [Message(_HH_ROLES[role], body) for role, body in zip(parts[1::2], parts[2::2])]
    for i, message in enumerate(messages):
        if not message.content.strip():
            raise BadRecord("empty-turn", f"{key!r}: turn {i} ({message.role}) is empty")
    return messages


def _messages(value: object, key: str) -> list[Message]:
    if isinstance(value, str):
        return _hh_transcript(value, key)
    if not isinstance(value, list) or not value:
        raise BadRecord("bad-field", f"{key!r} is {type(value).__name__}, expected a message list")
    return [parse_turn(turn, f"{key}[{i}]") for i, turn in enumerate(value)]


def _check_prompt(prompt: list[Message], key: str) -> list[Message]:
    turns = prompt[1:] if prompt and prompt[0].role == "system" else prompt
    check_turn_order(turns, f"{key}: ")
    if not turns or turns[-1].role != "user":
        raise BadRecord("bad-prompt", f"{key}: the prompt must end with a user turn")
    return prompt


def _reply(value: object, key: str) -> str:
    """A reply given as a string, one assistant turn, or a list holding one assistant turn."""
    if isinstance(value, str):
        if not value.strip():
            raise BadRecord("empty-reply", f"{key!r} is empty")
        return value
    turns = value if isinstance(value, list) else [value]
    if len(turns) != 1:
        raise BadRecord(
            "bad-reply",
            f"{key!r} holds {len(turns)} messages, expected one assistant reply "
            "(whole transcripts need no 'prompt'/'conversations' key)",
        )
    message = parse_turn(turns[0], key)
    if message.role != "assistant":
        raise BadRecord("bad-reply", f"{key!r} is a {message.role!r} turn, expected 'assistant'")
    return message.content


def _split_transcripts(chosen: list[Message], rejected: list[Message]) -> PreferencePair:
    for key, transcript in (("chosen", chosen), ("rejected", rejected)):
        if transcript[-1].role != "assistant":
            raise BadRecord(
                "bad-transcript", f"{key!r} ends with a {transcript[-1].role!r} turn, not a reply"
            )
    if chosen[:-1] != rejected[:-1]:
        turn = next(
            (i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b),
            min(len(chosen), len(rejected)) - 1,
        )
        raise BadRecord(
            "transcripts-differ",
            f"'chosen' and 'rejected' differ at turn {turn}, before their last replies "
            f"({len(chosen)} and {len(rejected)} turns); only the final reply may differ",
        )
    return PreferencePair(
        _check_prompt(chosen[:-1], "chosen"), chosen[-1].content, rejected[-1].content
    )


def parse_preference(record: object) -> PreferencePair:
    """The pair of one record, in any of the layouts of the module docstring."""
    if not isinstance(record, dict):
        raise BadRecord("not-an-object", f"expected a JSON object, got {type(record).__name__}")
    for key in ("chosen", "rejected"):
        if key not in record:
            keys = ", ".join(sorted(record)[:8]) or "none"
            raise BadRecord("missing-key", f"no key {key!r} (keys: {keys})")
    prompt_key = next((k for k in ("conversations", "prompt") if k in record), None)
    if prompt_key is None:
        pair = _split_transcripts(
            _messages(record["chosen"], "chosen"), _messages(record["rejected"], "rejected")
        )
    else:
        value = record[prompt_key]
        if isinstance(value, str) and value.strip():
            prompt = [Message("user", value)]
        else:
            prompt = _check_prompt(_messages(value, prompt_key), prompt_key)
        pair = PreferencePair(
            prompt, _reply(record["chosen"], "chosen"), _reply(record["rejected"], "rejected")
        )
    if pair.chosen == pair.rejected:
        raise BadRecord("identical-replies", "'chosen' and 'rejected' are the same reply")
    return pair
