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


def parse_turn(turn: object, where: str) -> Message:
    """One turn, ShareGPT's {"from", "value"} or the chat format's {"role", "content"};
    `where` names it in errors (e.g. "conversations[3]")."""
    if not isinstance(turn, dict):
        raise BadRecord(
            "bad-turn",
            f"{where} is {type(turn).__name__}, expected an object with 'from' and 'value' "
            "(or 'role' and 'content')",
        )
    speaker_key, text_key = ("from", "value") if "from" in turn else ("role", "content")
    speaker, text = turn.get(speaker_key), turn.get(text_key)
    if speaker not in ROLE_OF_SPEAKER:
        raise BadRecord(
            "bad-role",
            f"{where}.{speaker_key}={speaker!r}, expected one of {', '.join(ROLE_OF_SPEAKER)}",
        )
    if not isinstance(text, str):
        raise BadRecord(
            "bad-turn", f"{where}.{text_key} is {type(text).__name__}, expected a string"
        )
    if not text.strip():
        raise BadRecord("empty-turn", f"{where}.{text_key} is empty")
    return Message(ROLE_OF_SPEAKER[speaker], text)


def check_turn_order(turns: list[Message], where: str = "") -> None:
    """User and assistant alternate from a user turn (the system turn already split off)."""
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message.role != expected:
            raise BadRecord(
                "bad-turn-order",
                f"{where}a {message.role!r} turn where a {expected!r} turn "
                "belongs (after an optional system turn, user and assistant alternate)",
            )


def parse_sharegpt(record: object) -> list[Message]:
    """The conversation of one record, normalised to [system?] user, assistant, user, ..., assistant."""
    if not isinstance(record, dict):
        raise BadRecord("not-an-object", f"expected a JSON object, got {type(record).__name__}")
    turns = record.get("conversations")
    if not isinstance(turns, list):
        raise BadRecord("missing-key", "no 'conversations' list")
    messages = [parse_turn(turn, f"conversations[{i}]") for i, turn in enumerate(turns)]
    system = [messages.pop(0)] if messages and messages[0].role == "system" else []
    while messages and messages[0].role == "assistant":
        messages.pop(0)
    if messages and messages[-1].role == "user":
        messages.pop()
    check_turn_order(messages)
    if not messages:
        raise BadRecord("no-assistant-turn", "no user turn followed by an assistant reply")
    return system + messages
