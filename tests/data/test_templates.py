"""Chat templates: exact formats, prompt/training agreement, the HF Jinja export, validation."""

import pytest

from chatbaker_megatron.config.data import CHAT_TEMPLATES
from chatbaker_megatron.data.templates import (
    TEMPLATES,
    ChatTemplate,
    Message,
    chat_template_jinja,
    load_template,
    render_conversation,
    render_prompt,
)

U, A, S = "user", "assistant", "system"
CONVERSATION = [
    Message(U, "안녕?"),
    Message(A, "네, 안녕하세요!"),
    Message(U, "What is 2+2?"),
    Message(A, "4."),
]
SPECIAL = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}


def test_vicuna_renders_fastchat_vicuna_v1_1():
    text = render_conversation(
        TEMPLATES["vicuna_v1.1"], CONVERSATION, bos_token="<s>", eos_token="</s>"
    ).text
    assert text == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions. USER: 안녕? "
        "ASSISTANT: 네, 안녕하세요!</s>USER: What is 2+2? ASSISTANT: 4.</s>"
    )


def test_chatbaker_renders_human_bot_turns():
    rendered = render_conversation(TEMPLATES["chatbaker"], CONVERSATION, **SPECIAL)
    system = TEMPLATES["chatbaker"].default_system
    assert rendered.text == (
        f"{system}\n<human>: 안녕? <bot>: 네, 안녕하세요!<|endoftext|>"
        "<human>: What is 2+2? <bot>: 4.<|endoftext|>"
    )
    assert [rendered.text[a:b] for a, b in rendered.targets] == [
        " 네, 안녕하세요!<|endoftext|>",
        " 4.<|endoftext|>",
    ]


@pytest.mark.parametrize("name", TEMPLATES)
def test_serving_prompt_is_the_training_text_up_to_each_reply(name):
    template = TEMPLATES[name]
    rendered = render_conversation(template, CONVERSATION, **SPECIAL)
    for turn, (start, _) in enumerate(rendered.targets):
        prompt = render_prompt(template, CONVERSATION[: 2 * turn + 1], **SPECIAL)
        assert prompt == rendered.text[:start]
        assert prompt.endswith(template.assistant_prefix)


def test_system_message_replaces_the_default_and_empty_means_none():
    template = TEMPLATES["chatbaker"]
    own = render_prompt(template, [Message(S, "Be brief."), Message(U, "hi")], **SPECIAL)
    assert own == "Be brief.\n<human>: hi <bot>:"
    assert (
        render_prompt(template, [Message(S, ""), Message(U, "hi")], **SPECIAL)
        == "<human>: hi <bot>:"
    )


def test_placeholders_inside_content_stay_literal():
    text = render_prompt(
        TEMPLATES["chatbaker"], [Message(S, "{eos}"), Message(U, "{content} {bos}")], **SPECIAL
    )
    assert text == "{eos}\n<human>: {content} {bos} <bot>:"


@pytest.mark.parametrize("name", TEMPLATES)
def test_jinja_export_renders_exactly_the_same_text(name, demo):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(demo.tokenizer))
    hf.chat_template = chat_template_jinja(TEMPLATES[name])
    cases = [
        CONVERSATION,
        [Message(S, 'You are "quoted"\\ and\nmultiline 😀.'), *CONVERSATION],
        [Message(S, ""), *CONVERSATION[:2]],
    ]
    for messages in cases:
        as_dicts = [{"role": m.role, "content": m.content} for m in messages]
        assert (
            hf.apply_chat_template(as_dicts, tokenize=False)
            == render_conversation(TEMPLATES[name], messages, **SPECIAL).text
        )
        prompt = [*as_dicts, {"role": "user", "content": "다음 질문"}]
        assert hf.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) == (
            render_prompt(TEMPLATES[name], [*messages, Message(U, "다음 질문")], **SPECIAL)
        )


def test_turn_order_is_checked():
    with pytest.raises(ValueError, match="the last turn is 'assistant', expected 'user'"):
        render_prompt(TEMPLATES["chatbaker"], CONVERSATION, **SPECIAL)
    with pytest.raises(ValueError, match="turn 1: role 'user', expected 'assistant'"):
        render_conversation(TEMPLATES["chatbaker"], [Message(U, "a"), Message(U, "b")], **SPECIAL)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"assistant_prefix": "<bot>: "},
            "assistant_prefix='<bot>: ': expected a non-empty prefix",
        ),
        ({"user_format": "<human>: "}, "user_format='<human>: ': expected one {content}"),
        ({"assistant_format": " {content}"}, "assistant_format=' {content}': expected to end with"),
        ({"system_format": "hello\n"}, "system_format='hello\\\\n': expected one {system}"),
    ],
)
def test_invalid_templates_are_rejected(change, message):
    fields = {**TEMPLATES["chatbaker"].__dict__, **change}
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("(", r"\(")):
        ChatTemplate(**fields)


def test_templates_load_by_name_or_yaml(tmp_path):
    assert load_template("vicuna_v1.1") is TEMPLATES["vicuna_v1.1"]
    path = tmp_path / "mine.yaml"
    path.write_text(
        'name: mine\ndefault_system: ""\nsystem_format: "{system}\\n"\n'
        'user_format: "Q: {content}\\n"\nassistant_prefix: "A:"\nassistant_format: " {content}{eos}\\n"\n'
    )
    with pytest.raises(ValueError, match="expected to end with"):
        load_template(str(path))
    path.write_text(path.read_text().replace("{eos}\\n", "{eos}"))
    mine = load_template(str(path))
    assert render_prompt(mine, [Message(U, "hi")], **SPECIAL) == "Q: hi\nA:"
    with pytest.raises(ValueError, match="unknown chat template 'nope'"):
        load_template("nope")


def test_the_config_names_exactly_the_shipped_templates():
    # config/data.py checks data.sft.template without importing this package.
    assert tuple(TEMPLATES) == CHAT_TEMPLATES
