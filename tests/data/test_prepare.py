"""Demo data preparation: fast, idempotent, safe when every rank calls it at once."""

import os

import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from chatbaker_megatron.config.data import DataConfig
from chatbaker_megatron.data.prepare import STAMP, prepare_data, prepare_demo_data
from chatbaker_megatron.data.tokenizer import load_tokenizer


def outputs(root) -> dict[str, int]:
    """Every output file and its modification time."""
    return {
        name: os.stat(os.path.join(root, name)).st_mtime_ns
        for name in sorted(os.listdir(root))
        if name != ".prepare.lock"
    } | {
        f"tokenizer/{n}": os.stat(root / "tokenizer" / n).st_mtime_ns
        for n in sorted(os.listdir(root / "tokenizer"))
    }


def test_second_call_reuses_the_data(demo):
    before = outputs(demo.root)
    again = prepare_demo_data(demo.root)
    assert again == demo and outputs(demo.root) == before
    for prefix in [*demo.pretrain.values(), demo.sft]:
        assert IndexedDataset.exists(prefix)
    assert load_tokenizer(demo.tokenizer).vocab_size == 4096


def test_a_stale_stamp_rebuilds_identically(demo, tmp_path):
    root = tmp_path / "d"
    prepare_demo_data(root)
    (root / STAMP).write_text('{"format": 0}')
    prepare_demo_data(root)
    for name in (
        "tokenizer/tokenizer.json",
        "pretrain_ko.bin",
        "pretrain_en.idx",
        "sft_chatbaker.bin",
    ):
        assert (root / name).read_bytes() == (demo.root / name).read_bytes()


def prepare_on_rank(root: str) -> bytes:
    return (prepare_demo_data(root).tokenizer / "tokenizer.json").read_bytes()


def test_ranks_preparing_at_once_agree(ranks, demo, tmp_path):
    results = ranks.run(2, prepare_on_rank, str(tmp_path / "shared"))
    assert results[0] == results[1] == (demo.tokenizer / "tokenizer.json").read_bytes()
    assert not [n for n in os.listdir(tmp_path / "shared") if ".partial-" in n]


def test_prepare_data_returns_the_configured_tokenizer(tmp_path):
    tokenizer = prepare_data(DataConfig(root=str(tmp_path), prepare_demo=True))
    assert tokenizer.vocab_size == 4096 and (tmp_path / STAMP).exists()
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        prepare_data(DataConfig(root=str(tmp_path / "empty")))
