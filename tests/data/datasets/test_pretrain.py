"""Pretraining blend: weights, splits, deterministic/resumable order, index cache without a shared FS."""

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from omegaconf import OmegaConf

from chatbaker_megatron.config.data import DataConfig, DatasetConfig
from chatbaker_megatron.config.schema import RunConfig
from chatbaker_megatron.data.datasets.pretrain import build_pretrain_datasets
from chatbaker_megatron.data.demo.prepare import PRETRAIN_SAMPLES
from chatbaker_megatron.data.tokenizer.load import load_tokenizer
from chatbaker_megatron.data.tokenizer.train import train_tokenizer


def write_documents(prefix: Path, first_token: int, count: int, seed: int) -> None:
    """`count` documents of random length; document i is made of token first_token + i, then eos (2)."""
    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for i in range(count):
        length = int(rng.integers(20, 200))
        builder.add_document(np.array([first_token + i] * length + [2]), [length + 1])
    builder.finalize(f"{prefix}.idx")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_documents(root / "a", 10, 300, seed=1)  # tokens 10..309
    write_documents(root / "b", 1000, 300, seed=2)  # tokens 1000..1299
    return root


def config(root, weights=(1.0, 3.0), **overrides) -> DataConfig:
    datasets = [DatasetConfig(name=n, path=n, weight=w) for n, w in zip("ab", weights)]
    return DataConfig(root=str(root), datasets=datasets, **overrides)


def source_of(sample: dict) -> set[str]:
    tokens = sample["tokens"][sample["tokens"] != 2]
    return {"a" if t < 1000 else "b" for t in tokens.tolist()}


def build(cfg, tokenizer, seed=1234, num_samples=(4000, 200, 200), seq_length=64):
    return build_pretrain_datasets(
        cfg, tokenizer=tokenizer, seq_length=seq_length, seed=seed, num_samples=num_samples
    )


@pytest.mark.parametrize("weights", [(1.0, 3.0), (100.0, 1000.0)])
def test_blend_matches_weights(corpus, tokenizer, tmp_path, weights):
    train, _, _ = build(config(corpus, weights, cache_dir=str(tmp_path)), tokenizer)
    assert len(train) >= 4000
    ids = np.array([int(train[i]["dataset_id"]) for i in range(4000)])
    share_b = weights[1] / sum(weights)
    assert abs((ids == 1).mean() - share_b) < 0.01
    # The tokens agree with dataset_id: samples really come from that dataset.
    for i in range(0, 4000, 97):
        assert source_of(train[i]) == {"ab"[ids[i]]}


def test_samples_are_shifted_next_token_targets(corpus, tokenizer, tmp_path):
    train, _, _ = build(config(corpus, cache_dir=str(tmp_path)), tokenizer)
    sample = train[5]
    assert set(sample) == {"tokens", "labels", "loss_mask", "position_ids", "dataset_id"}
    assert sample["tokens"].shape == sample["labels"].shape == (64,)
    assert (
        sample["tokens"].dtype
        == sample["labels"].dtype
        == sample["position_ids"].dtype
        == torch.int64
    )
    assert sample["loss_mask"].dtype == torch.float32 and bool((sample["loss_mask"] == 1).all())
    assert torch.equal(sample["labels"][:-1], sample["tokens"][1:])
    assert torch.equal(sample["position_ids"], torch.arange(64))


def test_splits_draw_from_disjoint_documents(corpus, tokenizer, tmp_path):
    train, valid, test = build(
        config(corpus, split=[80.0, 10.0, 10.0], cache_dir=str(tmp_path)), tokenizer
    )

    def documents(dataset, n):
        return {t for i in range(n) for t in dataset[i]["tokens"].tolist() if t != 2}

    seen = [documents(train, 2000), documents(valid, 200), documents(test, 200)]
    assert not seen[0] & seen[1] and not seen[0] & seen[2] and not seen[1] & seen[2]


def test_order_is_deterministic_resumable_and_seeded(corpus, tokenizer, tmp_path):
    first, _, _ = build(config(corpus, cache_dir=str(tmp_path / "c1")), tokenizer)
    again, _, _ = build(config(corpus, cache_dir=str(tmp_path / "c2")), tokenizer)
    cached, _, _ = build(config(corpus, cache_dir=str(tmp_path / "c1")), tokenizer)
    other_seed, _, _ = build(config(corpus, cache_dir=str(tmp_path / "c1")), tokenizer, seed=99)
    # Resuming at sample N of a fresh build, or from the cache, gives what the first run saw.
    for n in (0, 1, 1234, 3999):
        assert torch.equal(first[n]["tokens"], again[n]["tokens"])
        assert torch.equal(first[n]["tokens"], cached[n]["tokens"])
    assert any(not torch.equal(first[n]["tokens"], other_seed[n]["tokens"]) for n in range(20))


def test_cache_location_is_configurable(corpus, tokenizer, tmp_path):
    build(config(corpus, cache_dir=str(tmp_path / "local")), tokenizer)
    host = socket.gethostname()
    assert any(p.name.endswith("shuffle_index.npy") for p in (tmp_path / "local" / host).iterdir())
    build(config(corpus, cache_dir=str(tmp_path / "shared"), cache_mode="shared"), tokenizer)
    assert any(p.name.endswith("shuffle_index.npy") for p in (tmp_path / "shared").iterdir())


def test_missing_dataset_and_foreign_tokenizer_are_named(demo, tokenizer, tmp_path):
    cfg = DataConfig(
        root=str(demo.root),
        datasets=[
            DatasetConfig(name="ko", path="pretrain_ko"),
            DatasetConfig(name="x", path="nowhere"),
        ],
    )
    with pytest.raises(FileNotFoundError, match=r"data\.datasets\[1\]\.path='nowhere'"):
        build(cfg, tokenizer)
    train_tokenizer(
        [str(PRETRAIN_SAMPLES["ko"])], tmp_path / "other", vocab_size=300, show_progress=False
    )
    cfg.datasets = cfg.datasets[:1]
    with pytest.raises(
        ValueError,
        match=r"data\.datasets\[0\]\.path='pretrain_ko': .*pretrain_ko "
        r"was preprocessed with tokenizer .* preprocess it again",
    ):
        build(cfg, load_tokenizer(tmp_path / "other"))


def test_demo_config_builds_from_the_bundled_corpus(demo, tokenizer, tmp_path):
    # The demo's data is the run config's default (conf/data/demo.yaml adds nothing).
    cfg = OmegaConf.structured(RunConfig().data)
    cfg.root = str(demo.root)
    train, valid, test = build(cfg, tokenizer, num_samples=(500, 20, 20), seq_length=128)
    assert len(train) >= 500 and len(valid) >= 20 and len(test) >= 20
    sources = [int(train[i]["dataset_id"]) for i in range(500)]
    assert 0.45 < np.mean(sources) < 0.55  # equal weights: half Korean, half English
    text = tokenizer.decode(train[0]["tokens"].tolist())
    assert text.strip()


def rank_builds(root: str, tokenizer_dir: str, cache_dir: str, mode: str, fake_hosts: bool) -> dict:
    """One rank's view: samples, and the cache files its node has (runs in a ranks pool)."""
    import torch.distributed as dist

    rank = dist.get_rank()
    real = socket.gethostname
    if fake_hosts:
        socket.gethostname = lambda: f"node{rank}"  # every rank its own node, own cache dir
    try:
        cfg = config(root, cache_dir=cache_dir, cache_mode=mode)
        train, valid, _ = build(cfg, load_tokenizer(tokenizer_dir), num_samples=(300, 20, 20))
        node_dir = (
            os.path.join(cache_dir, socket.gethostname()) if mode == "node_local" else cache_dir
        )
        return {
            "train": [train[i]["tokens"].tolist() for i in (0, 7, 299)],
            "valid": valid[3]["tokens"].tolist(),
            "cache": sorted(os.listdir(node_dir)),
        }
    finally:
        socket.gethostname = real


def test_two_nodes_without_a_shared_filesystem(ranks, corpus, demo, tokenizer, tmp_path):
    # Each rank pretends to be on its own node: neither can see the other's cache.
    results = ranks.run(
        2, rank_builds, str(corpus), str(demo.tokenizer), str(tmp_path / "nl"), "node_local", True
    )
    single, valid, _ = build(
        config(corpus, cache_dir=str(tmp_path / "single")), tokenizer, num_samples=(300, 20, 20)
    )
    expected = [single[i]["tokens"].tolist() for i in (0, 7, 299)]
    for result in results:
        assert result["train"] == expected and result["valid"] == valid[3]["tokens"].tolist()
    assert results[0]["cache"] == results[1]["cache"] and results[0]["cache"]
    assert sorted(os.listdir(tmp_path / "nl")) == ["node0", "node1"]


def test_shared_cache_mode_and_world_size_one(ranks, corpus, demo, tmp_path):
    shared = ranks.run(
        2, rank_builds, str(corpus), str(demo.tokenizer), str(tmp_path / "sh"), "shared", False
    )
    alone = ranks.run(
        1, rank_builds, str(corpus), str(demo.tokenizer), str(tmp_path / "one"), "node_local", False
    )
    assert shared[0]["train"] == shared[1]["train"] == alone[0]["train"]


def rank_fails_to_build(root: str, tokenizer_dir: str, cache_dir: str) -> str:
    try:
        build(
            config(root, cache_dir=cache_dir), load_tokenizer(tokenizer_dir), num_samples=(10, 2, 2)
        )
    except RuntimeError as err:
        return str(err)
    return "built"


def test_a_failed_node_build_raises_on_every_rank(ranks, corpus, demo, tmp_path):
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("")
    messages = ranks.run(2, rank_fails_to_build, str(corpus), str(demo.tokenizer), str(blocker))
    for message in messages:  # both ranks learn of it; neither waits forever in a barrier
        assert "building the index cache" in message and "failed on rank 0" in message
