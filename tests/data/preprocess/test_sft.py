"""SFT preprocessing: masks that agree with tokenisation, ShareGPT parsing, `preprocess --format sft`."""

import json
import re
import unicodedata

import numpy as np
import pytest

from chatbaker_megatron.cli import main
from chatbaker_megatron.data.corpus import BadInputError, BadRecord
from chatbaker_megatron.data.demo.prepare import SFT_SAMPLES
from chatbaker_megatron.data.preprocess.conversations import parse_sharegpt
from chatbaker_megatron.data.preprocess.pipeline import preprocess
from chatbaker_megatron.data.preprocess.sft_tokenize import encode_prompt, tokenize_conversation
from chatbaker_megatron.data.templates import TEMPLATES, ChatTemplate, Message, render_prompt

U, A, S = "user", "assistant", "system"
KOREAN = [
    Message(U, "헌법 제1조는 뭐야?"),
    Message(A, "대한민국은 민주공화국이다."),
    Message(U, "제3조는?"),
    Message(A, "영토는 한반도와 그 부속도서로 한다."),
]
ENGLISH = [
    Message(S, "Be brief."),
    Message(U, "Reverse a string?"),
    Message(A, "Use s[::-1]."),
    Message(U, "And a list?"),
    Message(A, "lst.reverse() 😀"),
    Message(U, "Thanks!"),
    Message(A, "  You're welcome."),
]

# Decomposed Hangul (NFD): NFC normalisation must not shift the mask.
DECOMPOSED = [Message(m.role, unicodedata.normalize("NFD", m.content)) for m in KOREAN]


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(int), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def test_targets_are_exactly_the_replies_on_a_hand_checked_example(tokenizer):
    conv = tokenize_conversation(tokenizer, TEMPLATES["chatbaker"], KOREAN)
    spans = runs(conv.targets)
    assert [tokenizer.decode(conv.ids[a:b].tolist()) for a, b in spans] == [
        " 대한민국은 민주공화국이다.<|endoftext|>",
        " 영토는 한반도와 그 부속도서로 한다.<|endoftext|>",
    ]
    # The token before each reply is the ':' of '<bot>:', each reply ends with eos,
    # and the next token (a new turn) is not a target.
    colon = tokenizer.encode(":")
    bot = tokenizer.backend.token_to_id("<bot>")
    for start, end in spans:
        assert conv.ids[start - 2 : start].tolist() == [bot, *colon]
        assert conv.ids[end - 1] == tokenizer.eos_id
    assert conv.ids[spans[0][1]] == tokenizer.backend.token_to_id("<human>")
    # Everything else is prompt, and the whole decodes back to the rendered text.
    system = TEMPLATES["chatbaker"].default_system
    assert tokenizer.decode(conv.ids[~conv.targets].tolist()) == (
        f"{system}\n<human>: 헌법 제1조는 뭐야? <bot>:<human>: 제3조는? <bot>:"
    )
    assert tokenizer.decode(conv.ids.tolist()) == (
        f"{system}\n<human>: 헌법 제1조는 뭐야? <bot>: 대한민국은 민주공화국이다.<|endoftext|>"
        "<human>: 제3조는? <bot>: 영토는 한반도와 그 부속도서로 한다.<|endoftext|>"
    )


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize(
    "messages", [KOREAN, ENGLISH, DECOMPOSED], ids=["korean", "english", "nfd-korean"]
)
def test_serving_prompt_tokens_are_a_prefix_of_training_tokens(tokenizer, name, messages):
    template = TEMPLATES[name]
    conv = tokenize_conversation(tokenizer, template, messages)
    assert tokenizer.decode(conv.ids.tolist()).endswith(tokenizer.eos_token)
    offset = 1 if messages[0].role == S else 0
    for turn, (start, end) in enumerate(runs(conv.targets)):
        history = messages[: offset + 2 * turn + 1]
        prompt = render_prompt(
            template, history, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token
        )
        # Serving tokenises the prompt alone: it must be exactly the training prefix.
        assert tokenizer.encode(prompt) == conv.ids[:start].tolist()
        assert encode_prompt(tokenizer, template, history) == conv.ids[:start].tolist()
        reply = messages[offset + 2 * turn + 1].content
        decoded = tokenizer.decode(conv.ids[start:end].tolist())
        assert decoded == unicodedata.normalize("NFC", f" {reply}{tokenizer.eos_token}")


def test_a_template_whose_tokens_straddle_the_reply_is_rejected(tokenizer):
    glued = ChatTemplate(
        name="glued",
        default_system="",
        system_format="{system}",
        user_format="Q: {content}\n",
        assistant_prefix="A: th",
        assistant_format="{content}{eos}",
    )
    # The prompt ends in 'th' and the reply starts with 'e': one token ' the' spans both.
    with pytest.raises(BadRecord, match=r"template-boundary: token .* across the reply span"):
        tokenize_conversation(tokenizer, glued, [Message(U, "hi"), Message(A, "e end")])
    assert tokenize_conversation(
        tokenizer, glued, [Message(U, "hi"), Message(A, " ok")]
    ).targets.any()


def test_sharegpt_records_normalise_like_fastchat():
    record = {
        "id": "x",
        "conversations": [
            {"from": "system", "value": "sys"},
            {"from": "gpt", "value": "orphan reply"},
            {"from": "human", "value": "q"},
            {"from": "chatgpt", "value": "a"},
            {"from": "user", "value": "unanswered"},
        ],
    }
    assert parse_sharegpt(record) == [Message(S, "sys"), Message(U, "q"), Message(A, "a")]


@pytest.mark.parametrize(
    ("record", "kind"),
    [
        ([1, 2], "not-an-object"),
        ({"messages": []}, "missing-key"),
        ({"conversations": [{"from": "robot", "value": "x"}]}, "bad-role"),
        ({"conversations": [{"from": "human", "value": " "}]}, "empty-turn"),
        ({"conversations": [{"from": "human", "value": 3}]}, "bad-turn"),
        ({"conversations": ["hello"]}, "bad-turn"),
        (
            {
                "conversations": [
                    {"from": "human", "value": "q"},
                    {"from": "human", "value": "q"},
                    {"from": "gpt", "value": "a"},
                ]
            },
            "bad-turn-order",
        ),
        ({"conversations": [{"from": "human", "value": "q"}]}, "no-assistant-turn"),
    ],
)
def test_bad_conversations_are_named(record, kind):
    with pytest.raises(BadRecord) as err:
        parse_sharegpt(record)
    assert err.value.kind == kind


def test_preprocess_sft_reports_truncation_and_packing(demo, tmp_path, capsys):
    rc = main(
        [
            "preprocess",
            "--format",
            "sft",
            "--input",
            str(SFT_SAMPLES),
            "--tokenizer",
            str(demo.tokenizer),
            "--output-prefix",
            str(tmp_path / "sft"),
            "--workers",
            "0",
            "--seq-length",
            "256",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    match = re.search(
        r"sft: [\d.]+% of tokens are assistant targets; at seq length 256: (\d+) "
        r"truncated to whole turns, (\d+) dropped .*; packing efficiency ([\d.]+)% "
        r"in [\d,]+ sequences \(pad-to-max: ([\d.]+)% in [\d,]+\)",
        out,
    )
    assert match, out
    truncated, dropped, packed, padded = (float(g) for g in match.groups())
    assert truncated > 0 and dropped > 0 and packed > padded


def test_preprocess_sft_names_bad_records(demo, tmp_path):
    jsonl = tmp_path / "c.jsonl"
    good = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    jsonl.write_text(
        json.dumps(good)
        + "\n"
        + json.dumps({"conversations": [{"from": "gpt", "value": "a"}]})
        + "\n"
    )
    with pytest.raises(BadInputError, match=r"c\.jsonl:2: no-assistant-turn"):
        preprocess(
            [str(jsonl)], str(demo.tokenizer), str(tmp_path / "o"), fmt="sft", progress=False
        )
    array = tmp_path / "c.json"
    array.write_text(json.dumps([good, good, {"conversations": [{"from": "robot", "value": "x"}]}]))
    with pytest.raises(BadInputError, match=r"c\.json\[2\]: bad-role"):
        preprocess(
            [str(array)], str(demo.tokenizer), str(tmp_path / "o"), fmt="sft", progress=False
        )
    stats = preprocess(
        [str(array), str(jsonl)],
        str(demo.tokenizer),
        str(tmp_path / "o"),
        fmt="sft",
        on_error="skip",
        progress=False,
    )
    assert stats.docs == 3 and stats.errors.total == 2
