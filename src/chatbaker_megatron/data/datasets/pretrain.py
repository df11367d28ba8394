"""Pretraining data: the configured blend -> megatron GPTDatasets for train/valid/test.

megatron-core does the work: BlendedMegatronDatasetBuilder splits every
indexed dataset's documents into train/valid/test, builds a GPTDataset per
split with shuffled fixed-length samples, and blends them by weight. A
sample is megatron's dict: `tokens`, `labels` (next-token targets),
`loss_mask`, `position_ids`, plus `dataset_id` when several datasets blend.
Sample i depends only on the data, weights, split, seq_length and seed, so
resuming at sample N is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

from chatbaker_megatron.config.data import cache_dir, resolve_path
from chatbaker_megatron.data.datasets.index_cache import (
    build_gpt_datasets,
    build_on_every_node,
    every_rank,
    node_cache_dir,
)
from chatbaker_megatron.data.datasets.integrity import check_dataset
from chatbaker_megatron.data.tokenizer.load import ChatBakerTokenizer


def dataset_prefixes(cfg: Any, tokenizer: ChatBakerTokenizer) -> list[str]:
    """The blend's resolved prefixes, each checked to exist, to be whole and to match the tokenizer."""
    prefixes = []
    for i, dataset in enumerate(cfg.datasets):
        prefix = resolve_path(cfg.root, dataset.path)
        setting = f"data.datasets[{i}].path={dataset.path!r}"
        meta = check_dataset(prefix, setting, tokenizer, "chatbaker preprocess")
        if meta is not None and meta.get("format") != "text":
            raise ValueError(
                f"data.datasets[{i}].path={dataset.path!r}: a {meta.get('format')} "
                "dataset, expected pretraining text (--format text)"
            )
        prefixes.append(prefix)
    return prefixes


def gpt_dataset_config(
    cfg: Any, *, tokenizer: ChatBakerTokenizer, seq_length: int, seed: int
) -> GPTDatasetConfig:
    """megatron's dataset config for the blend (the index cache location included)."""
    base = cache_dir(cfg)
    return GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=(dataset_prefixes(cfg, tokenizer), [float(d.weight) for d in cfg.datasets]),
        split=",".join(str(float(part)) for part in cfg.split),
        path_to_cache=node_cache_dir(base) if cfg.cache_mode == "node_local" else base,
        tokenizer=tokenizer,
        # Plain causal LM over documents joined by eos, as in GPT/LLaMA pretraining.
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        # The attention kernel applies the causal mask itself; an S x S mask
        # per sample would only cost memory.
        create_attention_mask=False,
    )


def build_pretrain_datasets(
    cfg: Any,
    *,
    tokenizer: ChatBakerTokenizer,
    seq_length: int,
    seed: int,
    num_samples: tuple[int, int, int],
    is_built_on_rank: Callable[[], bool] | None = None,
) -> tuple:
    """(train, valid, test) datasets of at least the requested sample counts; None for an empty split.

    Call on every rank (collective when torch.distributed is initialised);
    `is_built_on_rank` may restrict which ranks get datasets (megatron's
    convention: the others get None), by default every rank does.
    """
    if cfg.kind != "pretrain":
        raise ValueError(f"data.kind={cfg.kind!r}: build_pretrain_datasets needs 'pretrain'")
    config = gpt_dataset_config(cfg, tokenizer=tokenizer, seq_length=seq_length, seed=seed)
    sizes = [int(n) for n in num_samples]
    if cfg.cache_mode == "node_local":
        build_on_every_node(config, sizes)
    return tuple(build_gpt_datasets(config, sizes, is_built_on_rank or every_rank))
