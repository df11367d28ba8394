"""SFT datasets: whole-turn truncation, packed samples, deterministic order, config checks."""

import itertools
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import default_collate

from chatbaker_megatron.config.data import DataConfig, SFTConfig
from chatbaker_megatron.data.datasets.packing import fit_whole_turns, turn_ends
from chatbaker_megatron.data.datasets.sft import build_sft_datasets
from chatbaker_megatron.data.demo.prepare import SFT_SAMPLES
from chatbaker_megatron.data.preprocess.conversations import parse_sharegpt
from chatbaker_megatron.data.preprocess.pipeline import preprocess
from chatbaker_megatron.data.preprocess.sft_tokenize import tokenize_conversation
from chatbaker_megatron.data.templates import TEMPLATES
from tests.data.preprocess.test_sft import ENGLISH, runs


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
