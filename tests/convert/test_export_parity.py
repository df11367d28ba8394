"""Export: transformers' logits on the exported folder equal ours at every layout; round trips.

Our logits are computed at the layout itself (TP shards gathered, through
megatron's pipeline schedules for PP/VPP); the checkpoint is saved by
save_checkpoint, as training saves it; the reference is transformers'
LlamaForCausalLM.
"""

from __future__ import annotations

import filecmp
import json

import pytest
import torch

from chatbaker_megatron.convert.export_hf import export_hf
from chatbaker_megatron.convert.model_card import render_model_card
from tests.support import tiny_checkpoints as tiny

# fp32 on both sides; only the summation order differs (TP splits the reductions).
LOGIT_ATOL = 2e-5


@pytest.mark.parametrize("layout", ["tp1", "tp2", "pp2", "pp2_vpp2"])
def test_transformers_logits_equal_ours(layout, layout_checkpoint, exported):
    ours, _ = layout_checkpoint(layout)
    theirs = tiny.hf_logits(exported(layout), tiny.tokens())
    diff = (ours[..., : tiny.VOCAB] - theirs).abs().max().item()
    print(
        f"\nexport parity {layout}: max |logits diff| = {diff:.3e} (|logits| <= {theirs.abs().max():.2f})"
    )
    assert theirs.shape == (2, tiny.SEQ, tiny.VOCAB)
    assert diff < LOGIT_ATOL


def test_exported_folder(exported, tokenizer_dir):
    from transformers import AutoTokenizer

    from chatbaker_megatron.data.tokenizer.load import load_tokenizer

    hf = exported("tp2")
    config = json.loads((hf / "config.json").read_text())
    ours = load_tokenizer(tokenizer_dir)
    expected = {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": tiny.VOCAB,
        "num_key_value_heads": 2,
        "num_attention_heads": 4,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": ours.bos_id,
        "eos_token_id": ours.eos_id,
        "pad_token_id": ours.pad_id,
    }
    assert {key: config[key] for key in expected} == expected
    generation = json.loads((hf / "generation_config.json").read_text())
    assert generation["eos_token_id"] == ours.eos_id
    index = json.loads((hf / "model.safetensors.index.json").read_text())
    assert len(index["weight_map"]) == 2 + 1 + 9 * tiny.TINY.num_layers
    text = "대한민국 헌법 and the Python docs"
    assert AutoTokenizer.from_pretrained(str(hf)).encode(
        text, add_special_tokens=False
    ) == ours.encode(text)
    card = (hf / "README.md").read_text()
    assert "- iterations: 7" in card and "num_query_groups: 2" in card
    provenance = json.loads((hf / "chatbaker.json").read_text())
    assert provenance["train_state"]["iteration"] == 7
    assert provenance["tokens_trained"] == 14 * tiny.SEQ


def test_small_shards_stream_and_give_the_same_weights(layout_checkpoint, exported, tmp_path):
    _, root = layout_checkpoint("pp2")
    out = tmp_path / "sharded"
    export_hf(root, out, max_shard_size="60KB", progress=False)
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 3
    torch.testing.assert_close(
        tiny.hf_logits(out, tiny.tokens()),
        tiny.hf_logits(exported("pp2"), tiny.tokens()),
        rtol=0,
        atol=0,
    )


def test_export_reads_one_layer_at_a_time(layout_checkpoint, tmp_path, monkeypatch):
    from chatbaker_megatron.checkpoint.reader import MegatronCheckpoint

    reads: list[list[str]] = []
    read = MegatronCheckpoint.read
    monkeypatch.setattr(
        MegatronCheckpoint, "read", lambda self, names: reads.append(names) or read(self, names)
    )
    _, root = layout_checkpoint("pp2_vpp2")
    export_hf(root, tmp_path / "hf", progress=False)
    assert len(reads) == tiny.TINY.num_layers + 2
    for names in reads[1:-1]:
        assert len({name.split(".")[2] for name in names}) == 1, f"one layer per read: {names}"


@pytest.mark.parametrize("layout", ["pp2_vpp2", "tp1_sft"])
def test_export_import_export_is_byte_identical(ranks, exported, layout, tmp_path):
    first = exported(layout)
    imported = tmp_path / "imported"
    ranks.run(2, tiny.import_on_ranks, str(first), str(imported), 2, 1)
    second = tmp_path / "second"
    export_hf(imported, second, progress=False)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(first, second, names, shallow=False)
    assert (mismatch, errors) == ([], []), f"differ: {mismatch + errors}"
    assert len(match) == len(names)


def test_existing_output_is_not_overwritten(layout_checkpoint, tmp_path):
    _, root = layout_checkpoint("tp1")
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        export_hf(root, tmp_path, progress=False)


def test_sft_export_ships_the_training_chat_template(exported):
    from transformers import AutoTokenizer

    from chatbaker_megatron.data.templates import TEMPLATES, Message, read_template, render_prompt
    from chatbaker_megatron.data.tokenizer.load import load_tokenizer

    hf = exported("tp1_sft")
    template = TEMPLATES["chatbaker"]
    assert read_template(hf) == template
    assert read_template(exported("tp1")) is None, "a pretrained model names no chat template"
    messages = [
        Message("user", "안녕?"),
        Message("assistant", "네, 안녕하세요."),
        Message("user", "이름이 뭐야?"),
    ]
    rendered_by_hf = AutoTokenizer.from_pretrained(str(hf)).apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages],
        tokenize=False,
        add_generation_prompt=True,
    )
    ours = load_tokenizer(hf)
    assert rendered_by_hf == render_prompt(
        template, messages, bos_token=ours.bos_token, eos_token=ours.eos_token
    )
    card = (hf / "README.md").read_text()
    assert "## Chat format" in card and "(chat model, SFT)\n" in card
    # A DPO run's export (data.kind preference) says so in the title.
    provenance = json.loads((hf / "chatbaker.json").read_text())
    hf_config = json.loads((hf / "config.json").read_text())
    dpo_card = render_model_card(provenance, hf_config, "preference", None)
    assert "(chat model, SFT + preference tuning)\n" in dpo_card
