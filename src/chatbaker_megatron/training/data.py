"""The datasets a run trains and validates on, sized for its iteration budget.

Ranks only read: the tokenizer and datasets exist before training starts
(written by `chatbaker tokenizer train` and `chatbaker preprocess`, or, for
the bundled demo corpus, by `chatbaker train` / `chatbaker prepare-data`
before torchrun starts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatbaker_megatron.config.data import resolve_path
from chatbaker_megatron.config.schema import RunConfig
from chatbaker_megatron.data.datasets.preference import build_preference_datasets
from chatbaker_megatron.data.datasets.pretrain import build_pretrain_datasets
from chatbaker_megatron.data.datasets.sft import build_sft_datasets
from chatbaker_megatron.data.demo.prepare import require_demo_data
from chatbaker_megatron.data.tokenizer.load import ChatBakerTokenizer, load_tokenizer


@dataclass
class TrainingData:
    tokenizer: ChatBakerTokenizer
    train: Any
    valid: Any | None


def build_training_data(cfg: RunConfig, *, total_iters: int) -> TrainingData:
    """Tokenizer plus train/valid datasets for `cfg.data` (pretraining blend, SFT or preference set).

    Pretraining datasets are built for exactly the samples the run consumes
    (megatron's sample index), validation for every scheduled evaluation.
    """
    if cfg.data.prepare_demo:
        require_demo_data(cfg.data.root)
    tokenizer = load_tokenizer(resolve_path(cfg.data.root, cfg.data.tokenizer))
    train_cfg = cfg.train
    if cfg.data.kind in ("sft", "preference"):
        build = build_sft_datasets if cfg.data.kind == "sft" else build_preference_datasets
        train, valid = build(
            cfg.data, tokenizer=tokenizer, seq_length=train_cfg.seq_length, seed=train_cfg.seed
        )
        return TrainingData(tokenizer, train, valid)
    evaluations = total_iters // train_cfg.eval_interval + 1 if train_cfg.eval_interval else 0
    valid_samples = evaluations * train_cfg.eval_iters * train_cfg.global_batch_size
    train, valid, _test = build_pretrain_datasets(
        cfg.data,
        tokenizer=tokenizer,
        seq_length=train_cfg.seq_length,
        seed=train_cfg.seed,
        num_samples=(total_iters * train_cfg.global_batch_size, valid_samples, 0),
    )
    return TrainingData(tokenizer, train, valid if valid_samples else None)
