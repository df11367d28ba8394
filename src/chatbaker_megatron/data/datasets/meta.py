"""The `PREFIX.meta.json` sidecar of a preprocessed dataset, and the tokenizer check it allows.

`chatbaker preprocess` records what a dataset was made with (format,
tokenizer and its sha256, chat template, counts); training reads it to
refuse data from another tokenizer. Datasets from other tools have no
sidecar and are accepted as they are.
"""

from __future__ import annotations

import json

from chatbaker_megatron.data.tokenizer.load import ChatBakerTokenizer


def meta_path(prefix: str) -> str:
    return prefix + ".meta.json"


def read_meta(prefix: str) -> dict | None:
    """The sidecar of a dataset written by `chatbaker preprocess`; None for other datasets."""
    try:
        with open(meta_path(prefix), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def check_tokenizer(prefix: str, tokenizer: ChatBakerTokenizer, setting: str) -> dict | None:
    """Refuse a dataset preprocessed with another tokenizer; `setting` names the config entry."""
    meta = read_meta(prefix)
    if meta is not None and meta.get("tokenizer_sha256") != tokenizer.sha256:
        raise ValueError(
            f"{setting}: {prefix} was preprocessed with tokenizer {meta.get('tokenizer')!r} "
            f"(sha256 {str(meta.get('tokenizer_sha256'))[:12]}), but training uses "
            f"{tokenizer.path!r} (sha256 {tokenizer.sha256[:12]}); preprocess it again"
        )
    return meta
