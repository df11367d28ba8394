"""The ChatBaker tokenizer at run time: load a tokenizer directory, encode, decode.

A tokenizer directory holds `tokenizer.json` (the `tokenizers` library's
file, also what transformers' PreTrainedTokenizerFast loads) and
`tokenizer_config.json`, which names the bos/eos/pad tokens. Any Hugging Face
fast-tokenizer directory with those three tokens loads, so an imported
checkpoint's own tokenizer works as well as one trained here.

ChatBakerTokenizer also serves as the `tokenizer` of megatron's
GPTDatasetConfig, which reads `vocab_size`, `eod`, `pad` and
`unique_identifiers` (the latter names the tokenizer in the index cache key).
megatron is not imported here, so tokenizer work stays light.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path

from tokenizers import Encoding, Tokenizer

# Special tokens of tokenizers trained by `chatbaker tokenizer train`, in id
# order (0..4): ids stay the same whatever the vocabulary size.
PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# Chat-role markers of the ChatBaker prompt format (`<human>: ... <bot>: ...`).
HUMAN_TOKEN = "<human>"
BOT_TOKEN = "<bot>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, HUMAN_TOKEN, BOT_TOKEN)

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"


class ChatBakerTokenizer:
    """A byte-level BPE tokenizer with the bos/eos/pad ids that training needs."""

    def __init__(
        self,
        backend: Tokenizer,
        *,
        bos_token: str,
        eos_token: str,
        pad_token: str,
        path: str,
    ) -> None:
        self.backend = backend
        self.path = path
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.bos_id = self._id_of(bos_token, "bos_token")
        self.eos_id = self._id_of(eos_token, "eos_token")
        self.pad_id = self._id_of(pad_token, "pad_token")
        # Content hash, not path: the index cache must change when the
        # tokenizer does, and must not when the same file sits elsewhere.
        self.sha256 = hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()

    def _id_of(self, token: str, role: str) -> int:
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{self.path}: {role} {token!r} is not in the vocabulary")
        return token_id

    @property
    def vocab_size(self) -> int:
        """Number of ids, added special tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eod(self) -> int:
        """megatron's name for the end-of-document id (our eos)."""
        return self.eos_id

    @property
    def pad(self) -> int:
        """megatron's name for the padding id."""
        return self.pad_id

    @property
    def unique_identifiers(self) -> OrderedDict:
        """What megatron hashes into the index cache key for this tokenizer."""
        return OrderedDict([("class", type(self).__name__), ("tokenizer_sha256", self.sha256)])

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; nothing is added (no bos/eos), special tokens in it are matched."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, texts: list[str]) -> list[Encoding]:
        """Batch-encode with character offsets (used to align masks with text spans)."""
        return self.backend.encode_batch(texts, add_special_tokens=False)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)


def _token_content(value: object) -> str | None:
    """A token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def load_tokenizer(path: str | Path) -> ChatBakerTokenizer:
    """Load a tokenizer directory (or its tokenizer.json; the config is read beside it)."""
    path = Path(path)
    directory = path.parent if path.name == TOKENIZER_FILE else path
    tokenizer_file, config_file = directory / TOKENIZER_FILE, directory / CONFIG_FILE
    if not tokenizer_file.is_file():
        raise FileNotFoundError(
            f"{tokenizer_file}: no tokenizer file (train one with `chatbaker tokenizer train`)"
        )
    backend = Tokenizer.from_file(str(tokenizer_file))
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    tokens: dict[str, str] = {}
    for role in ("bos_token", "eos_token", "pad_token"):
        content = _token_content(config.get(role))
        if content is None:
            raise ValueError(
                f"{config_file}: no {role}; a ChatBaker tokenizer needs bos, eos and pad tokens"
            )
        tokens[role] = content
    return ChatBakerTokenizer(backend, path=str(directory), **tokens)
