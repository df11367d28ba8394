"""Chat templates as data, rendered the same way for training, serving and HF export.

A template is five strings. A conversation renders as

    system_format(system) + [user_format(q) + assistant_prefix + assistant_format(a)]...

and a serving prompt is the same text cut right after an `assistant_prefix`,
so a prompt is, character for character, a prefix of the training text.
Placeholders: {system}, {content}, {bos}, {eos} (the tokenizer's token texts).

`assistant_format` is what the model learns to generate: the loss is taken
on exactly the characters it renders (the reply and the closing eos).
`assistant_prefix` must end in a non-space character so that tokenising the
prompt alone gives a prefix of the training tokens (preprocess/sft_tokenize
checks the token boundaries on every conversation).

The shipped templates live in TEMPLATES (config/data.py's CHAT_TEMPLATES
names them, so that the run config is checked without importing this
package); a YAML file with the same six keys (name + the five strings) loads
through load_template(path) as well.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from chatbaker_megatron.config.data import TEMPLATE_SUFFIXES

ROLES = ("system", "user", "assistant")
_PLACEHOLDER = re.compile(r"\{(system|content|bos|eos)\}")


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    # System prompt used when a conversation has no system message ("" for none).
    default_system: str
    # How a non-empty system prompt renders; must contain {system}.
    system_format: str
    # How a user turn renders; must contain {content}.
    user_format: str
    # Opens every assistant turn; a serving prompt ends with it.
    assistant_prefix: str
    # The assistant's reply after the prefix; must contain {content} and end with {eos}.
    assistant_format: str

    def __post_init__(self) -> None:
        def need(key: str, ok: bool, expected: str) -> None:
            if not ok:
                value = getattr(self, key)
                raise ValueError(
                    f"chat template {self.name!r}: {key}={value!r}: expected {expected}"
                )

        need("system_format", self.system_format.count("{system}") == 1, "one {system}")
        need("user_format", self.user_format.count("{content}") == 1, "one {content}")
        need("assistant_format", self.assistant_format.count("{content}") == 1, "one {content}")
        need("assistant_format", self.assistant_format.endswith("{eos}"), "to end with {eos}")
        need(
            "assistant_prefix",
            bool(self.assistant_prefix) and not self.assistant_prefix[-1].isspace(),
            "a non-empty prefix that ends in a non-space character",
        )
        need(
            "assistant_prefix",
            not re.search(r"\{(system|content)\}", self.assistant_prefix),
            "no {system} or {content}",
        )


TEMPLATES: dict[str, ChatTemplate] = {
    # The ChatBaker / 42dot release format: `<human>: {q} <bot>: {a}{eos}`.
    "chatbaker": ChatTemplate(
        name="chatbaker",
        default_system=(
            "호기심 많은 인간 (human)과 인공지능 봇 (AI bot)의 대화입니다. "
            "봇의 이름은 ChatBaker이고, 인간의 질문에 대해 친절하고 유용하며 상세한 답변을 제공합니다."
        ),
        system_format="{system}\n",
        user_format="<human>: {content} ",
        assistant_prefix="<bot>:",
        assistant_format=" {content}{eos}",
    ),
    # FastChat's vicuna_v1.1: `SYS USER: {q} ASSISTANT: {a}</s>USER: ...`.
    "vicuna_v1.1": ChatTemplate(
        name="vicuna_v1.1",
        default_system=(
            "A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions."
        ),
        system_format="{system} ",
        user_format="USER: {content} ",
        assistant_prefix="ASSISTANT:",
        assistant_format=" {content}{eos}",
    ),
}


def load_template(name_or_path: str) -> ChatTemplate:
    """A shipped template by name, or a template YAML file by path."""
    if name_or_path in TEMPLATES:
        return TEMPLATES[name_or_path]
    path = Path(name_or_path)
    if path.suffix not in TEMPLATE_SUFFIXES or not path.is_file():
        raise ValueError(
            f"unknown chat template {name_or_path!r}: expected one of "
            f"{', '.join(TEMPLATES)} or a template .yaml file"
        )
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    keys = {f.name for f in fields(ChatTemplate)}
    if not isinstance(data, dict) or set(data) != keys:
        raise ValueError(f"{path}: expected exactly the keys {', '.join(sorted(keys))}")
    return ChatTemplate(**data)


# The template as data in a model folder (an HF export, an imported checkpoint).
TEMPLATE_FILE = "chatbaker_template.yaml"


def write_template(path: Path, template: ChatTemplate) -> None:
    path.write_text(
        yaml.safe_dump(asdict(template), allow_unicode=True, sort_keys=False), encoding="utf-8"
    )


def read_template(directory: Path) -> ChatTemplate | None:
    """The chat template a model folder ships, if any."""
    path = directory / TEMPLATE_FILE
    return load_template(str(path)) if path.is_file() else None


def _fill(fmt: str, values: dict[str, str]) -> str:
    # One pass, so a placeholder inside user content is never substituted.
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], fmt)


def _split_system(template: ChatTemplate, messages: list[Message]) -> tuple[str, list[Message]]:
    if messages and messages[0].role == "system":
        return messages[0].content, messages[1:]
    return template.default_system, messages


def _check_turns(turns: list[Message], last_role: str) -> None:
    if not turns:
        raise ValueError("a conversation needs at least one user turn")
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message.role != expected:
            raise ValueError(
                f"turn {i}: role {message.role!r}, expected {expected!r} (an optional system "
                "message first, then user and assistant turns alternating)"
            )
    if turns[-1].role != last_role:
        raise ValueError(f"the last turn is {turns[-1].role!r}, expected {last_role!r}")


@dataclass(frozen=True)
class Rendered:
    """A rendered conversation and the character spans the model is trained to generate."""

    text: str
    targets: list[tuple[int, int]]


def _render(
    template: ChatTemplate, messages: list[Message], bos_token: str, eos_token: str, last_role: str
) -> Rendered:
    system, turns = _split_system(template, messages)
    _check_turns(turns, last_role)
    special = {"bos": bos_token, "eos": eos_token}
    parts = [_fill(template.system_format, {**special, "system": system})] if system else []
    length = sum(map(len, parts))
    targets = []
    for message in turns:
        values = {**special, "content": message.content}
        if message.role == "user":
            piece = _fill(template.user_format, values)
        else:
            parts.append(_fill(template.assistant_prefix, special))
            length += len(parts[-1])
            piece = _fill(template.assistant_format, values)
            targets.append((length, length + len(piece)))
        parts.append(piece)
        length += len(piece)
    return Rendered("".join(parts), targets)


def render_conversation(
    template: ChatTemplate, messages: list[Message], *, bos_token: str, eos_token: str
) -> Rendered:
    """Training text of a conversation that ends with an assistant turn."""
    return _render(template, messages, bos_token, eos_token, last_role="assistant")


def render_prompt(
    template: ChatTemplate, messages: list[Message], *, bos_token: str, eos_token: str
) -> str:
    """Serving prompt: the conversation so far (ending with a user turn) + the assistant prefix."""
    rendered = _render(template, messages, bos_token, eos_token, last_role="user")
    return rendered.text + _fill(template.assistant_prefix, {"bos": bos_token, "eos": eos_token})


def _jinja(fmt: str, content: str) -> str:
    """A format string as Jinja expressions; literals are quoted so whitespace survives exactly."""
    names = {"system": "system", "content": content, "bos": "bos_token", "eos": "eos_token"}
    out, pos = [], 0
    for match in _PLACEHOLDER.finditer(fmt):
        if match.start() > pos:
            out.append("{{ " + json.dumps(fmt[pos : match.start()], ensure_ascii=False) + " }}")
        out.append("{{ " + names[match.group(1)] + " }}")
        pos = match.end()
    if pos < len(fmt):
        out.append("{{ " + json.dumps(fmt[pos:], ensure_ascii=False) + " }}")
    return "".join(out)


def chat_template_jinja(template: ChatTemplate) -> str:
    """The template as a Hugging Face `chat_template` (rendering exactly what _render renders)."""
    content = "message['content']"
    prefix = _jinja(template.assistant_prefix, content)
    default = json.dumps(template.default_system, ensure_ascii=False)
    return (
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
        f"{{%- else -%}}{{%- set system = {default} -%}}{{%- set turns = messages -%}}"
        "{%- endif -%}\n"
        f"{{%- if system -%}}{_jinja(template.system_format, content)}{{%- endif -%}}\n"
        "{%- for message in turns -%}\n"
        f"{{%- if message['role'] == 'user' -%}}{_jinja(template.user_format, content)}\n"
        f"{{%- elif message['role'] == 'assistant' -%}}{prefix}"
        f"{_jinja(template.assistant_format, content)}\n"
        "{%- else -%}{{ raise_exception('unexpected role ' + message['role']) }}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        f"{{%- if add_generation_prompt -%}}{prefix}{{%- endif -%}}"
    )
