"""The bundled demo corpus: built once, before any rank starts; ranks only read it.

prepare_demo_data turns the bundled samples (samples/README.md) into a
tokenizer and indexed datasets under one directory, in about a second. It
is idempotent (a stamp records the inputs it was built from). `chatbaker
train` calls it (through prepare_data) before it starts torchrun, and
`chatbaker prepare-data` does the same for launches that start the ranks
another way; training ranks only check the stamp (require_demo_data). The
launchers of a multi-node run may prepare a shared directory at once: one
builds under a file lock while the others wait, then find the stamp. On
nodes without a shared filesystem each node builds its own copy; tokenizer
training is deterministic, so the copies are identical.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SAMPLES = Path(__file__).parent / "samples"
PRETRAIN_SAMPLES = {"ko": SAMPLES / "pretrain_ko.jsonl", "en": SAMPLES / "pretrain_en.jsonl"}
SFT_SAMPLES = SAMPLES / "sft_conversations.json"
PREFERENCE_SAMPLES = SAMPLES / "preference_pairs.jsonl"
# The demo preference set's sequence length: both sides of a pair in one sequence.
PREFERENCE_SEQ_LENGTH = 384
# 4096 ids: the demo corpus is ~160K tokens, so every id is seen ~40 times on
# average, and a 4096 x 128 embedding plus output layer (1M parameters) stays
# the size of the tiny model's four transformer layers. Korean still gets
# syllable and common-word tokens: 0.67 tokens per character on held-out
# text (English 0.26), against 3 for raw UTF-8 bytes.
DEMO_VOCAB_SIZE = 4096
DEMO_TEMPLATE = "chatbaker"
# Bump when the way the demo data is built changes, to rebuild old copies.
DEMO_FORMAT = 2
STAMP = "demo.json"


@dataclass(frozen=True)
class DemoData:
    """Paths of the prepared demo data; dataset paths are megatron prefixes."""

    root: Path
    tokenizer: Path
    pretrain: dict[str, str]  # language -> prefix
    sft: str
    preference: str

    @classmethod
    def under(cls, root: Path) -> DemoData:
        return cls(
            root=root,
            tokenizer=root / "tokenizer",
            pretrain={lang: str(root / f"pretrain_{lang}") for lang in PRETRAIN_SAMPLES},
            sft=str(root / f"sft_{DEMO_TEMPLATE}"),
            preference=str(root / f"preference_{DEMO_TEMPLATE}"),
        )


def _fingerprint() -> dict:
    digest = hashlib.sha256()
    for path in [*PRETRAIN_SAMPLES.values(), SFT_SAMPLES, PREFERENCE_SAMPLES]:
        digest.update(path.read_bytes())
    return {
        "format": DEMO_FORMAT,
        "vocab_size": DEMO_VOCAB_SIZE,
        "template": DEMO_TEMPLATE,
        "samples_sha256": digest.hexdigest(),
    }


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _stamp_matches(root: Path, fingerprint: dict) -> bool:
    try:
        return json.loads((root / STAMP).read_text(encoding="utf-8")) == fingerprint
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def prepare_demo_data(root: str | Path) -> DemoData:
    """Build (once) the demo tokenizer, pretraining datasets (ko, en), SFT and preference sets
    under `root`."""
    from chatbaker_megatron.data.preprocess.pipeline import preprocess
    from chatbaker_megatron.data.tokenizer.train import train_tokenizer

    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    data = DemoData.under(root)
    fingerprint = _fingerprint()
    with _exclusive(root / ".prepare.lock"):
        if _stamp_matches(root, fingerprint):
            return data
        (root / STAMP).unlink(missing_ok=True)
        staging = root / f".tokenizer.partial-{os.getpid()}"
        train_tokenizer(
            [str(p) for p in PRETRAIN_SAMPLES.values()],
            staging,
            vocab_size=DEMO_VOCAB_SIZE,
            heldout_fraction=0.0,
            chat_template=DEMO_TEMPLATE,
            show_progress=False,
        )
        shutil.rmtree(data.tokenizer, ignore_errors=True)
        staging.rename(data.tokenizer)
        for lang, path in PRETRAIN_SAMPLES.items():
            preprocess([str(path)], str(data.tokenizer), data.pretrain[lang], progress=False)
        chat_sets = (
            (SFT_SAMPLES, data.sft, "sft", 2048),  # the length of the SFT summary only
            (PREFERENCE_SAMPLES, data.preference, "preference", PREFERENCE_SEQ_LENGTH),
        )
        for samples, prefix, fmt, seq_length in chat_sets:
            preprocess(
                [str(samples)],
                str(data.tokenizer),
                prefix,
                fmt=fmt,
                chat_template=DEMO_TEMPLATE,
                seq_length=seq_length,
                progress=False,
            )
        stamp = root / f"{STAMP}.partial-{os.getpid()}"
        stamp.write_text(json.dumps(fingerprint, indent=2) + "\n", encoding="utf-8")
        stamp.replace(root / STAMP)
    return data


def prepare_data(cfg: Any) -> DemoData | None:
    """Build what a DataConfig asks to be built (the demo corpus when `prepare_demo`), else None."""
    return prepare_demo_data(cfg.root) if cfg.prepare_demo else None


def require_demo_data(root: str | Path) -> DemoData:
    """The prepared demo data under `root`; a clear error naming the stamp and the command if not."""
    root = Path(root).expanduser()
    if not _stamp_matches(root, _fingerprint()):
        state = "is missing" if not (root / STAMP).exists() else "is out of date"
        raise FileNotFoundError(
            f"{root / STAMP} {state}: the demo data (data.prepare_demo=true) is built before "
            "training starts, by `chatbaker train` or by `chatbaker prepare-data` with the "
            f"same overrides (e.g. data.root={root})"
        )
    return DemoData.under(root)
