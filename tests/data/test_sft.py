"""SFT: masks that agree with tokenisation, whole-turn truncation, ShareGPT parsing, packed samples."""

import itertools
import json
import re
import unicodedata

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import default_collate

from chatbaker_megatron.cli import main
from chatbaker_megatron.config.data import DataConfig, SFTConfig
from chatbaker_megatron.data.conversations import parse_sharegpt
from chatbaker_megatron.data.corpus import BadInputError, BadRecord
from chatbaker_megatron.data.prepare import SFT_SAMPLES
from chatbaker_megatron.data.preprocess import preprocess
from chatbaker_megatron.data.sft import build_sft_datasets
from chatbaker_megatron.data.sft_tokenize import (
    encode_prompt,
    fit_whole_turns,
    tokenize_conversation,
    turn_ends,
)
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


def test_truncation_keeps_whole_turns_and_equals_tokenising_fewer_turns(tokenizer):
    template = TEMPLATES["vicuna_v1.1"]
    conv = tokenize_conversation(tokenizer, template, ENGLISH)
    ends = turn_ends(conv.targets).tolist()
    assert len(ends) == 3 and ends[-1] == len(conv.ids)
    assert fit_whole_turns(conv.targets, len(conv.ids) + 5) == len(conv.ids)
    assert fit_whole_turns(conv.targets, ends[2] - 1) == ends[1]
    assert fit_whole_turns(conv.targets, ends[1]) == ends[1]
    assert fit_whole_turns(conv.targets, ends[0] - 1) == 0
    shorter = tokenize_conversation(tokenizer, template, ENGLISH[:5])
    assert shorter.ids.tolist() == conv.ids[: ends[1]].tolist()
    assert shorter.targets.tolist() == conv.targets[: ends[1]].tolist()


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


def sft_config(root, prefix="sft", **sft) -> DataConfig:
    return DataConfig(
        kind="sft", root=str(root), tokenizer="tokenizer", sft=SFTConfig(path=prefix, **sft)
    )


def check_sample(sample, seq_length, pad_id, packed=True):
    tokens, labels, mask, positions = (
        sample[k].numpy() for k in ("tokens", "labels", "loss_mask", "position_ids")
    )
    assert all(x.shape == (seq_length,) for x in (tokens, labels, mask, positions))
    assert sample["loss_mask"].dtype == torch.float32
    if not packed:
        assert "cu_seqlens" not in sample
        return [(0, seq_length)]
    cu = sample["cu_seqlens"].numpy()
    assert cu.shape == (seq_length + 1,) and cu.dtype == np.int32
    bounds = cu[: np.argmax(cu == seq_length) + 1].tolist()
    assert bounds[0] == 0 and bounds[-1] == seq_length and (cu[len(bounds) :] == seq_length).all()
    assert int(sample["max_seqlen"]) == max(np.diff(bounds))
    for start, end in itertools.pairwise(bounds):
        assert positions[start:end].tolist() == list(range(end - start))
        # Labels are next tokens inside the segment; none points across a boundary.
        assert labels[start : end - 1].tolist() == tokens[start + 1 : end].tolist()
        assert mask[end - 1] == 0
    return list(itertools.pairwise(bounds))


@pytest.fixture(scope="module")
def sft_root(demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    (root / "tokenizer").symlink_to(demo.tokenizer)
    preprocess(
        [str(SFT_SAMPLES)],
        str(demo.tokenizer),
        str(root / "sft"),
        fmt="sft",
        chat_template="chatbaker",
        progress=False,
    )
    return root


def test_packed_samples_keep_conversations_apart(sft_root, tokenizer):
    train, valid = build_sft_datasets(
        sft_config(sft_root, valid_fraction=0.1, epochs=2),
        tokenizer=tokenizer,
        seq_length=512,
        seed=3,
    )
    bins = len(train) // 2
    assert len(valid.conversations) == 5 and len(train.conversations) == 43
    assert not set(valid.conversations.tolist()) & set(train.conversations.tolist())
    segments_per_epoch = [0, 0]
    for index in range(len(train)):
        sample = train[index]
        segments = check_sample(sample, 512, tokenizer.pad_id)
        padded = sample["tokens"][segments[-1][0] :] == tokenizer.pad_id
        has_padding_tail = bool(padded.all()) and segments[-1][0] > 0
        segments_per_epoch[index // bins] += len(segments) - int(has_padding_tail)
        # Targets are assistant replies: every trained label run decodes to " ...<eos>".
        labels, mask = sample["labels"].numpy(), sample["loss_mask"].numpy().astype(bool)
        for start, end in runs(mask):
            reply = tokenizer.decode(labels[start:end].tolist())
            assert reply.startswith(" ") and reply.endswith("<|endoftext|>")
    # Each epoch covers every training conversation exactly once.
    assert segments_per_epoch == [43, 43]
    assert train.efficiency > 0.9
    order = [[train[i]["tokens"].tolist() for i in range(e * bins, (e + 1) * bins)] for e in (0, 1)]
    assert order[0] != order[1] and sorted(order[0]) == sorted(order[1])  # reshuffled per epoch


def test_sft_samples_match_the_source_conversations(sft_root, tokenizer):
    train, _ = build_sft_datasets(
        sft_config(sft_root, valid_fraction=0.0, epochs=1, packing=False),
        tokenizer=tokenizer,
        seq_length=1024,
        seed=0,
    )
    records = json.loads(SFT_SAMPLES.read_text(encoding="utf-8"))
    template = TEMPLATES["chatbaker"]
    for index in range(len(train)):
        sample = train[index]
        check_sample(sample, 1024, tokenizer.pad_id, packed=False)
        (conversation,) = train.conversations[train.bins.bin(train._bin_order(0)[index])]
        expected = tokenize_conversation(tokenizer, template, parse_sharegpt(records[conversation]))
        n = len(expected.ids)
        assert sample["tokens"][:n].tolist() == expected.ids.tolist()
        assert (sample["tokens"][n:] == tokenizer.pad_id).all()
        assert sample["loss_mask"][: n - 1].bool().tolist() == expected.targets[1:].tolist()
        assert not sample["loss_mask"][n - 1 :].any()


def test_sft_order_is_deterministic_and_batches_collate(sft_root, tokenizer):
    cfg = sft_config(sft_root)
    first, _ = build_sft_datasets(cfg, tokenizer=tokenizer, seq_length=256, seed=5)
    again, _ = build_sft_datasets(cfg, tokenizer=tokenizer, seq_length=256, seed=5)
    other, _ = build_sft_datasets(cfg, tokenizer=tokenizer, seq_length=256, seed=6)
    for n in (0, 3, len(first) - 1):
        assert all(torch.equal(first[n][k], again[n][k]) for k in first[n])
    assert any(not torch.equal(first[n]["tokens"], other[n]["tokens"]) for n in range(5))
    batch = default_collate([first[0], first[1]])
    assert batch["tokens"].shape == (2, 256) and batch["cu_seqlens"].shape == (2, 257)
    with pytest.raises(IndexError):
        first[len(first)]


def test_sft_rejects_mismatched_template_or_format(sft_root, demo, tokenizer):
    with pytest.raises(
        ValueError,
        match=r"data\.sft\.template='vicuna_v1\.1': .* preprocessed "
        r"with template 'chatbaker'",
    ):
        build_sft_datasets(
            sft_config(sft_root, template="vicuna_v1.1"),
            tokenizer=tokenizer,
            seq_length=256,
            seed=0,
        )
    with pytest.raises(ValueError, match=r"data\.sft\.path='pretrain_ko': not written by"):
        build_sft_datasets(
            sft_config(demo.root, prefix="pretrain_ko"), tokenizer=tokenizer, seq_length=256, seed=0
        )
    with pytest.raises(ValueError, match="no conversation has a first turn that fits"):
        build_sft_datasets(sft_config(sft_root), tokenizer=tokenizer, seq_length=16, seed=0)


def test_sft_demo_config_builds(demo, tokenizer):
    conf = OmegaConf.load(__file__.rsplit("/tests/", 1)[0] + "/conf/data/sft_demo.yaml")
    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), conf)
    cfg.root = str(demo.root)
    train, valid = build_sft_datasets(cfg, tokenizer=tokenizer, seq_length=512, seed=1234)
    assert valid is not None and len(train) == 3 * len(train.bins)
    check_sample(train[0], 512, tokenizer.pad_id)


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
