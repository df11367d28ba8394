"""Training the byte-level BPE tokenizer and writing a Hugging Face-loadable directory.

Byte-level BPE (GPT-2's scheme, as the ChatBaker release uses) has no
unknown token: any string, emoji and stray control characters included,
encodes and decodes back. Text is NFC-normalised first so that composed and
decomposed Hangul (e.g. from macOS file names or old web pages) share tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from chatbaker_megatron.data.corpus import ErrorTally, iter_documents
from chatbaker_megatron.data.templates import chat_template_jinja, load_template
from chatbaker_megatron.data.tokenizer.fertility import Fertility, measure_fertility
from chatbaker_megatron.data.tokenizer.load import (
    BOS_TOKEN,
    CONFIG_FILE,
    EOS_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
)

DEFAULT_VOCAB_SIZE = 50_304  # the ChatBaker release's, a multiple of 128
# Held-out documents are kept in memory for the fertility report; past this
# many the remaining documents all go to training.
MAX_HELDOUT_DOCS = 20_000


def new_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE pipeline: NFC -> byte-level split -> BPE -> byte-level decode."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


@dataclass
class HeldOutSplit:
    """Routes every document to training or to the held-out set, evenly spaced within each file."""

    fraction: float
    held_out: list[str] = field(default_factory=list)
    _seen: dict[str, int] = field(default_factory=dict)

    def is_held_out(self, path: str, text: str) -> bool:
        index = self._seen.get(path, 0)
        self._seen[path] = index + 1
        # Exactly floor(n * fraction) of a file's first n documents are held out.
        chosen = int((index + 1) * self.fraction) > int(index * self.fraction)
        if chosen and len(self.held_out) < MAX_HELDOUT_DOCS:
            self.held_out.append(text)
            return True
        return False


@dataclass
class TrainResult:
    tokenizer: Tokenizer
    output_dir: Path
    train_docs: int
    fertility: dict[str, Fertility]
    errors: ErrorTally


def train_tokenizer(
    inputs: list[str],
    output_dir: str | Path,
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    json_key: str = "text",
    heldout_fraction: float = 0.02,
    min_frequency: int = 2,
    chat_template: str = "chatbaker",
    on_error: str = "fail",
    show_progress: bool = True,
) -> TrainResult:
    """Train on .jsonl/.txt `inputs`, save to `output_dir`, measure fertility on held-out text."""
    if vocab_size <= len(SPECIAL_TOKENS) + 256:
        raise ValueError(
            f"--vocab-size={vocab_size}: expected > {len(SPECIAL_TOKENS) + 256} "
            "(special tokens + the 256 byte tokens)"
        )
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"--heldout-fraction={heldout_fraction}: expected 0 <= fraction < 1")
    template = load_template(chat_template)
    tally = ErrorTally(on_error)
    split = HeldOutSplit(heldout_fraction)
    train_docs = 0

    def training_texts() -> Iterator[str]:
        nonlocal train_docs
        for doc in iter_documents(inputs, json_key, tally):
            if not split.is_held_out(doc.path, doc.text):
                train_docs += 1
                yield doc.text

    tokenizer = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(training_texts(), trainer=trainer)
    if train_docs == 0:
        raise ValueError(f"no training documents in {', '.join(inputs)}")
    output_dir = Path(output_dir)
    save_tokenizer_dir(tokenizer, output_dir, chat_template_jinja(template))
    fertility = measure_fertility(tokenizer, split.held_out)
    return TrainResult(tokenizer, output_dir, train_docs, fertility, tally)


def save_tokenizer_dir(tokenizer: Tokenizer, output_dir: Path, chat_template: str) -> None:
    """tokenizer.json + the config files transformers' PreTrainedTokenizerFast reads."""
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(output_dir / TOKENIZER_FILE))
    roles = [token for token in SPECIAL_TOKENS if token not in (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)]
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "additional_special_tokens": roles,
        # Byte-level BPE decodes spaces exactly; clean-up would alter text.
        "clean_up_tokenization_spaces": False,
        "chat_template": chat_template,
    }
    (output_dir / CONFIG_FILE).write_text(
        json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    special_map = {**special, "additional_special_tokens": roles}
    (output_dir / "special_tokens_map.json").write_text(
        json.dumps(special_map, indent=2) + "\n", encoding="utf-8"
    )
