"""Preference pairs: the three record layouts, their errors, `preprocess --format preference`,
and the training sequence a pair becomes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from chatbaker_megatron.config.data import DataConfig, PreferenceDataConfig
from chatbaker_megatron.data.corpus import BadInputError, BadRecord
from chatbaker_megatron.data.datasets.preference import (
    build_preference_datasets,
    open_preference_store,
)
from chatbaker_megatron.data.preprocess.pipeline import preprocess
from chatbaker_megatron.data.preprocess.preference_pairs import PreferencePair, parse_preference
from chatbaker_megatron.data.preprocess.preference_tokenize import TokenizedPair, tokenize_pairs
from chatbaker_megatron.data.templates import Message, load_template

U, A = "user", "assistant"
PROMPT = [Message(U, "Hi"), Message(A, "Hello!"), Message(U, "Who are you?")]
EXPECTED = PreferencePair(PROMPT, "I am ChatBaker.", "I am ChatGPT.")
SHAREGPT_PROMPT = [
    {"from": "human", "value": "Hi"},
    {"from": "gpt", "value": "Hello!"},
    {"from": "human", "value": "Who are you?"},
]
ROLE_PROMPT = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Who are you?"},
]


@pytest.mark.parametrize(
    "record",
    [
        # ChatBaker's: ShareGPT prompt, replies as strings or turns.
        {
            "conversations": SHAREGPT_PROMPT,
            "chosen": "I am ChatBaker.",
            "rejected": "I am ChatGPT.",
        },
        {
            "conversations": SHAREGPT_PROMPT,
            "chosen": {"from": "gpt", "value": "I am ChatBaker."},
            "rejected": {"from": "gpt", "value": "I am ChatGPT."},
        },
        # TRL / UltraFeedback: explicit prompt, one-message completions.
        {
            "prompt": ROLE_PROMPT,
            "chosen": [{"role": "assistant", "content": "I am ChatBaker."}],
            "rejected": [{"role": "assistant", "content": "I am ChatGPT."}],
        },
        # Anthropic HH: whole transcripts, as messages or as text.
        {
            "chosen": [*ROLE_PROMPT, {"role": "assistant", "content": "I am ChatBaker."}],
            "rejected": [*ROLE_PROMPT, {"role": "assistant", "content": "I am ChatGPT."}],
        },
        {
            "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Who are you?"
            "\n\nAssistant: I am ChatBaker.",
            "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Who are you?"
            "\n\nAssistant: I am ChatGPT.",
        },
    ],
    ids=["sharegpt", "sharegpt_turns", "explicit_prompt", "transcripts", "hh_text"],
)
def test_layouts_give_the_same_pair(record):
    assert parse_preference(record) == EXPECTED


@pytest.mark.parametrize(
    ("record", "kind", "detail"),
    [
        ({"conversations": SHAREGPT_PROMPT, "chosen": "a"}, "missing-key", "'rejected'"),
        ({"prompt": "q", "chosen": "same", "rejected": "same"}, "identical-replies", "same"),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, "empty-reply", "'chosen'"),
        (
            {"conversations": SHAREGPT_PROMPT[:2], "chosen": "a", "rejected": "b"},
            "bad-prompt",
            "end with a user turn",
        ),
        (
            {"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
            "bad-reply",
            "'user' turn",
        ),
        (
            {
                "chosen": [*ROLE_PROMPT, {"role": "assistant", "content": "a"}],
                "rejected": [ROLE_PROMPT[0], {"role": "assistant", "content": "b"}],
            },
            "transcripts-differ",
            "differ at turn 1",
        ),
        ({"chosen": "no transcript", "rejected": "b"}, "bad-transcript", "Human"),
        (
            {"conversations": [{"from": "robot", "value": "q"}], "chosen": "a", "rejected": "b"},
            "bad-role",
            "conversations[0].from='robot'",
        ),
    ],
)
def test_bad_records_name_the_field(record, kind, detail):
    with pytest.raises(BadRecord) as err:
        parse_preference(record)
    assert err.value.kind == kind and detail in err.value.detail


def test_flags_mark_only_the_final_reply_and_the_prompt_is_shared(tokenizer):
    template = load_template("chatbaker")
    (pair,) = tokenize_pairs(tokenizer, template, [EXPECTED], seq_length=4096)
    assert isinstance(pair, TokenizedPair)
    for side, reply in ((pair.chosen, EXPECTED.chosen), (pair.rejected, EXPECTED.rejected)):
        # One run of flags at the end: the reply and its eos, not the earlier "Hello!".
        starts = np.flatnonzero(np.diff(np.concatenate([[0], side.targets.astype(int)])) == 1)
        assert starts.tolist() == [pair.prompt_tokens] and side.targets[-1]
        assert side.ids[-1] == tokenizer.eos_id
        assert reply in tokenizer.decode(side.ids[pair.prompt_tokens :].tolist())
    assert np.array_equal(
        pair.chosen.ids[: pair.prompt_tokens], pair.rejected.ids[: pair.prompt_tokens]
    )


def test_overlong_pairs_are_reported_never_cut(tokenizer):
    template = load_template("chatbaker")
    (fits,) = tokenize_pairs(tokenizer, template, [EXPECTED], seq_length=4096)
    long_reply = PreferencePair(PROMPT, "word " * 400, "I am ChatGPT.")
    results = tokenize_pairs(
        tokenizer, template, [long_reply, EXPECTED], seq_length=fits.length + 4
    )
    assert results[0].kind == "pair-too-long" and "never cut" in results[0].detail
    assert isinstance(results[1], TokenizedPair)
    (prompt_only,) = tokenize_pairs(tokenizer, template, [EXPECTED], seq_length=fits.prompt_tokens)
    assert prompt_only.kind == "prompt-too-long"


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return str(path)


def test_preprocess_writes_pairs_and_the_dataset_reads_them(demo, tokenizer, tmp_path):
    good = {"conversations": SHAREGPT_PROMPT, "chosen": "I am ChatBaker.", "rejected": "No."}
    source = write_jsonl(tmp_path / "pairs.jsonl", [good, {"prompt": "q", "chosen": "a"}, good])
    prefix = str(tmp_path / "pairs")
    with pytest.raises(BadInputError, match=r"pairs.jsonl:2: missing-key"):
        preprocess([source], str(demo.tokenizer), prefix, fmt="preference", progress=False)
    stats = preprocess(
        [source], str(demo.tokenizer), prefix, fmt="preference", on_error="skip", progress=False
    )
    assert stats.docs == 2 and stats.errors.total == 1
    assert "pairs" in stats.summary() and "preference:" in stats.summary()
    cfg = DataConfig(
        kind="preference",
        root=str(tmp_path),
        tokenizer=str(demo.tokenizer),
        preference=PreferenceDataConfig(path="pairs", valid_fraction=0.0),
    )
    store = open_preference_store(cfg, tokenizer)
    train, valid = build_preference_datasets(cfg, tokenizer=tokenizer, seq_length=512, seed=1)
    assert valid is None and len(train) == 2
    sample = train.sample(0)
    chosen, rejected = store[0], store[2]
    lc, lr = len(chosen), len(rejected)
    assert torch.equal(
        sample["tokens"][: lc + lr], torch.from_numpy(np.concatenate([chosen, rejected])).long()
    )
    # Labels never cross from the chosen into the rejected segment; masks split by side.
    assert sample["loss_mask"][lc - 1] == 0 and sample["chosen_mask"][lc:].sum() == 0
    assert sample["chosen_mask"].sum() == store[1][1:].sum()
    assert sample["loss_mask"].sum() == store[1][1:].sum() + store[3][1:].sum()
    assert sample["cu_seqlens"][:4].tolist() == [0, lc, lc + lr, 512]
    assert sample["position_ids"][lc] == 0 and int(sample["pair_index"]) == 0
    with pytest.raises(ValueError, match=r"no pair fits in train\.seq_length=8"):
        build_preference_datasets(cfg, tokenizer=tokenizer, seq_length=8, seed=1)
    sft = DataConfig(
        kind="preference",
        root=str(tmp_path),
        tokenizer=str(demo.tokenizer),
        preference=PreferenceDataConfig(path=demo.sft),
    )
    with pytest.raises(
        ValueError, match="not written by `chatbaker preprocess --format preference`"
    ):
        open_preference_store(sft, tokenizer)
