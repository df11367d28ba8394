"""Data config: the `data` Hydra group (conf/data/*.yaml).

One group describes both kinds of training data: a weighted blend of
preprocessed indexed datasets for pretraining (`kind: pretrain`) and a
preprocessed conversation set for supervised fine-tuning (`kind: sft`) and a
preprocessed set of chosen/rejected pairs for preference tuning (`kind: preference`).
Sequence length and seed are training settings and live in the `train` group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatbaker_megatron.config.checks import Choice, ConfigError, bounded, check_values


class DataKind(Choice):
    pretrain = "pretrain"
    sft = "sft"
    preference = "preference"


class CacheMode(Choice):
    node_local = "node_local"
    shared = "shared"


# The chat templates that ship with the package (data/templates.py defines
# them; named here so that the config is checked without importing data).
CHAT_TEMPLATES = ("chatbaker", "vicuna_v1.1")
TEMPLATE_SUFFIXES = (".yaml", ".yml")
CHAT_SET_NAMES = {"sft": "SFT", "preference": "preference"}


@dataclass
class DatasetConfig:
    """One indexed dataset (a megatron .bin/.idx pair) in the pretraining blend."""

    # Label used in logs and error messages, e.g. `ko_web`.
    name: str = ""
    # The dataset prefix, without .bin/.idx, as written by `chatbaker preprocess
    # --output-prefix`. Relative paths are taken from `data.root`.
    path: str = ""
    # Relative sampling weight; weights are normalised over the blend. Using
    # token counts (e.g. 100 for 100B Korean, 1000 for 1T English tokens)
    # samples every dataset in proportion to its size.
    weight: float = bounded(1.0, gt=0)


@dataclass
class SFTConfig:
    """Supervised fine-tuning data: one preprocessed conversation set."""

    # Prefix written by `chatbaker preprocess --format sft`; relative to `data.root`.
    path: str = ""
    # Chat template the set was preprocessed with (one of CHAT_TEMPLATES, or
    # a path to a template YAML file).
    # Must match the preprocessed set; generation reuses it for prompts.
    template: str = "chatbaker"
    # Pack several conversations into each sequence (cu_seqlens keeps
    # attention inside each conversation); false pads every conversation to
    # the sequence length, as FastChat does.
    packing: bool = True
    # Fraction of conversations held out for validation, chosen by the seed.
    valid_fraction: float = bounded(0.02, ge=0, lt=1)
    # Passes over the training conversations; each pass is reshuffled.
    epochs: int = bounded(3, ge=1)


@dataclass
class PreferenceDataConfig:
    """Preference tuning data (DPO/IPO/RPO): one preprocessed set of chosen/rejected pairs."""

    # Prefix written by `chatbaker preprocess --format preference`; relative to `data.root`.
    path: str = ""
    # Chat template the set was preprocessed with (as data.sft.template).
    template: str = "chatbaker"
    # Fraction of pairs held out for validation (reward accuracy), chosen by the seed.
    valid_fraction: float = bounded(0.1, ge=0, lt=1)
    # Passes over the training pairs; each pass is reshuffled.
    epochs: int = bounded(1, ge=1)


@dataclass
class DataConfig:
    """Training data: tokenizer, pretraining blend or SFT set, index cache."""

    # `pretrain` (blend of indexed datasets), `sft` (conversation set) or `preference` (pairs).
    kind: DataKind = DataKind.pretrain
    # Directory that relative paths below are taken from.
    root: str = "."
    # Tokenizer directory (tokenizer.json + tokenizer_config.json); relative to `root`.
    tokenizer: str = "tokenizer"
    # Build the bundled sample corpus (tokenizer + indexed datasets) into
    # `root` before the ranks start (`chatbaker train` or `chatbaker
    # prepare-data` does it; idempotent). The ranks only read it.
    prepare_demo: bool = False
    # Pretraining blend.
    datasets: list[DatasetConfig] = field(default_factory=list)
    # Train/valid/test proportions of every dataset's documents.
    split: list[float] = bounded(default_factory=lambda: [98.0, 1.0, 1.0], ge=0)  # each part
    # Where megatron's sample index cache goes; null means `<root>/index_cache`.
    cache_dir: str | None = None
    # `node_local`: every node builds the cache itself under
    # `<cache_dir>/<hostname>` (no shared filesystem needed); `shared`: rank 0
    # builds it once and the other ranks read it, so `cache_dir` must be on a
    # filesystem that every node sees.
    cache_mode: CacheMode = CacheMode.node_local
    sft: SFTConfig = field(default_factory=SFTConfig)
    preference: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)

    def validate(self) -> None:
        """Raise ConfigError naming the first impossible key of this group.

        Done when the run config is composed, before any process group starts.
        File existence is checked when the datasets are built, since
        `prepare_demo` may create them first; a template YAML file's contents,
        where the template is loaded.
        """
        check_values(self, "data.")
        if not self.tokenizer:
            _fail("tokenizer", self.tokenizer, "a tokenizer directory")
        if self.kind == DataKind.pretrain:
            _validate_pretrain(self)
        else:
            _validate_chat_set(getattr(self, self.kind), self.kind)


def resolve_path(root: str, path: str) -> str:
    """`path` if absolute, else `path` under `root` (with ~ expanded in both)."""
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(os.path.expanduser(root), path)


def cache_dir(cfg: Any) -> str:
    """The configured index cache directory, defaulting to `<root>/index_cache`."""
    return resolve_path(cfg.root, cfg.cache_dir or "index_cache")


def _fail(key: str, value: object, expected: str) -> None:
    raise ConfigError(f"data.{key}={value!r}: expected {expected}")


def _validate_pretrain(cfg: DataConfig) -> None:
    if len(cfg.datasets) == 0:
        _fail("datasets", list(cfg.datasets), "at least one dataset for kind=pretrain")
    names = set()
    for i, dataset in enumerate(cfg.datasets):
        if not dataset.path:
            _fail(f"datasets[{i}].path", dataset.path, "an indexed dataset prefix")
        if dataset.name and dataset.name in names:
            _fail(f"datasets[{i}].name", dataset.name, "a name not used by another dataset")
        names.add(dataset.name)
    split = list(cfg.split)
    if len(split) != 3:
        _fail("split", split, "3 numbers (train, valid, test)")
    if split[0] <= 0:
        _fail("split[0]", split[0], "> 0 (the train split cannot be empty)")


def _validate_chat_set(chat_set: Any, kind: str) -> None:
    """data.sft or data.preference: a preprocessed prefix and a known chat template."""
    if not chat_set.path:
        _fail(
            f"{kind}.path",
            chat_set.path,
            f"a preprocessed {CHAT_SET_NAMES[kind]} prefix for kind={kind}",
        )
    template = Path(chat_set.template)
    if chat_set.template not in CHAT_TEMPLATES and not (
        template.suffix in TEMPLATE_SUFFIXES and template.is_file()
    ):
        raise ConfigError(
            f"data.{kind}.template={chat_set.template!r}: unknown chat template "
            f"{chat_set.template!r}: "
            f"expected one of {', '.join(CHAT_TEMPLATES)} or a template .yaml file"
        )
