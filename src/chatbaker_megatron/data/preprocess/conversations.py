"""ShareGPT / Vicuna conversation records -> validated lists of Messages.

A record is `{"conversations": [{"from": "human"|"gpt"|"system", "value": str}, ...]}`
(other keys such as "id" are ignored). Like FastChat, a conversation that
opens with the assistant loses that turn, and a trailing user turn without a
reply is dropped; anything else out of order is a bad record.
"""

from __future__ import annotations

from chatbaker_megatron.data.corpus import BadRecord
from chatbaker_megatron.data.templates import Message

# ShareGPT dumps name the assistant after the service it was collected from.
ROLE_OF_SPEAKER = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "bot": "assistant",
}


def _message(turn: object, index: int) -> Message:
    if not isinstance(turn, dict):
        raise BadRecord(
            "bad-turn",
            f"conversations[{index}] is {type(turn).__name__}, "
            "expected an object with 'from' and 'value'",
        )
    speaker, value = turn.get("from"), turn.get("value")
    if speaker not in ROLE_OF_SPEAKER:
        raise BadRecord(
            "bad-role",
            f"conversations[{index}].from={speaker!r}, expected one of "
            f"{', '.join(ROLE_OF_SPEAKER)}",
        )
    if not isinstance(value, str):
        raise BadRecord(
            "bad-turn", f"conversations[{index}].value is {type(value).__name__}, expected a string"
        )
    if not value.strip():
        raise BadRecord("empty-turn", f"conversations[{index}].value is empty")
    return Message(ROLE_OF_SPEAKER[speaker], value)


def parse_sharegpt(record: object) -> list[Message]:
    """The conversation of one record, normalised to [system?] user, assistant, user, ..., assistant."""
    if not isinstance(record, dict):
        raise BadRecord("not-an-object", f"expected a JSON object, got {type(record).__name__}")
    turns = record.get("conversations")
    if not isinstance(turns, list):
        raise BadRecord("missing-key", "no 'conversations' list")
    messages = [_message(turn, i) for i, turn in enumerate(turns)]
    system = [messages.pop(0)] if messages and messages[0].role == "system" else []
    while messages and messages[0].role == "assistant":
        messages.pop(0)
    if messages and messages[-1].role == "user":
        messages.pop()
    for i, message in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if message.role != expected:
            raise BadRecord(
                "bad-turn-order",
                f"a {message.role!r} turn where a {expected!r} turn "
                "belongs (after an optional system turn, user and assistant alternate)",
            )
    if not messages:
        raise BadRecord("no-assistant-turn", "no user turn followed by an assistant reply")
    return system + messages
