"""Demo data preparation: fast, idempotent, safe when several launchers prepare at once; ranks only read."""

import os

import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from chatbaker_megatron import launch
from chatbaker_megatron.cli import main
from chatbaker_megatron.config.compose import compose
from chatbaker_megatron.config.data import DataConfig
from chatbaker_megatron.data.demo.prepare import (
    STAMP,
    prepare_data,
    prepare_demo_data,
    require_demo_data,
)
from chatbaker_megatron.data.tokenizer.load import load_tokenizer
from chatbaker_megatron.training.data import build_training_data


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


def test_launchers_preparing_at_once_agree(ranks, demo, tmp_path):
    # The launchers of a multi-node run whose data.root is on a shared filesystem.
    results = ranks.run(2, prepare_on_rank, str(tmp_path / "shared"))
    assert results[0] == results[1] == (demo.tokenizer / "tokenizer.json").read_bytes()
    assert not [n for n in os.listdir(tmp_path / "shared") if ".partial-" in n]


def test_prepare_data_builds_what_the_config_reads(tmp_path):
    cfg = DataConfig(root=str(tmp_path), prepare_demo=True)
    prepared = prepare_data(cfg)
    tokenizer = load_tokenizer(tmp_path / cfg.tokenizer)
    assert tokenizer.vocab_size == 4096 and (tmp_path / STAMP).exists()
    assert require_demo_data(tmp_path) == prepared
    assert prepare_data(DataConfig(root=str(tmp_path / "empty"))) is None
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        load_tokenizer(tmp_path / "empty" / cfg.tokenizer)


def test_ranks_only_read_and_name_the_missing_file_and_command(demo, tmp_path):
    cfg = compose([f"data.root={tmp_path}"])
    with pytest.raises(
        FileNotFoundError, match=r"demo\.json is missing: .*`chatbaker prepare-data`"
    ):
        build_training_data(cfg, total_iters=1)
    assert os.listdir(tmp_path) == []
    (tmp_path / STAMP).write_text('{"format": 0}')
    with pytest.raises(FileNotFoundError, match=r"demo\.json is out of date"):
        require_demo_data(tmp_path)
    cfg.data.root = str(demo.root)
    data = build_training_data(cfg, total_iters=1)
    assert data.tokenizer.vocab_size == 4096 and len(data.train) >= cfg.train.global_batch_size


def test_prepare_data_verb_takes_the_train_overrides(demo, capsys):
    assert main(["prepare-data", "data=sft_demo", f"data.root={demo.root}"]) == 0
    assert f"demo data ready in {demo.root}" in capsys.readouterr().out
    assert main(["prepare-data", "data=kr_en_blend"]) == 0
    assert "nothing to prepare: data.prepare_demo is false" in capsys.readouterr().out
    assert main(["prepare-data", "data.kind=finetune"]) == 2
    assert "invalid config: data.kind='finetune'" in capsys.readouterr().err


def test_multi_node_launcher_prepares_before_torchrun(demo):
    # Hydra flags and their values are left out (--cfg job would fail prepare-data).
    launch.prepare_node_data([f"data.root={demo.root}", "--cfg", "job"])
    with pytest.raises(SystemExit, match="`chatbaker prepare-data` failed"):
        launch.prepare_node_data(["data.kind=finetune"])
