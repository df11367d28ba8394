"""A byte-level BPE tokenizer.json encoded with tiktoken, ids identical to the `tokenizers` library.

The Hugging Face tokenizer stays the reference. `TiktokenEncoder.build`
turns its tokenizer.json into a tiktoken `Encoding` (the byte string of every
single-byte token and merge result, ranked by its id; the pre-tokeniser's
regex; the added tokens as tiktoken specials) only when that reproduces
the Hugging Face pipeline exactly, and raises `NotExact` naming the first
part it cannot represent otherwise. What is checked:

- no truncation or padding (encode_batch_fast would apply them);
- normaliser: none or NFC. NFC runs through the tokenizer's own normaliser
  (Python's `unicodedata` has another Unicode version: 59 combining marks
  sort differently), and only for text that is not ASCII;
- pre-tokeniser: `ByteLevel(add_prefix_space=False, use_regex=True)` (GPT-2's
  regex) or `Split(regex, "Isolated")` then `ByteLevel(use_regex=False)`
  (LLaMA-3's form);
- model: BPE with no dropout, unknown token, subword prefix/suffix or byte
  fallback; all 256 byte tokens present; merge results in non-decreasing id
  order (so ids are merge ranks, as tiktoken needs) and, without
  `ignore_merges`, every ranked token is what the Hugging Face BPE makes of
  its own bytes (tiktoken returns a whole pre-token found in the vocabulary);
- added tokens: matched literally anywhere (no lstrip/rstrip/single_word,
  not normalised) and none the prefix of another (tiktoken's alternation is
  not longest-first). Text is split at them first and each piece between them
  is normalised alone, as Hugging Face does;
- the post-processor is not checked: with add_special_tokens=False (all the
  preprocessing path asks for) it changes no ids.

Lone surrogates (possible in a Python str decoded from JSON) are refused
with a ValueError, where tiktoken would silently replace them and the
`tokenizers` library raises a TypeError. Agreement on real text is tested on
the bundled corpora and a stress set (tests/data/tokenizer/test_fast.py).
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from tokenizers import Tokenizer

from chatbaker_megatron.data.corpus import lone_surrogate

ENCODERS = ("auto", "tiktoken", "hf")
# The regex of the `tokenizers` ByteLevel pre-tokeniser with use_regex=True (GPT-2's).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class NotExact(ValueError):
    """The tokenizer has a part tiktoken cannot reproduce exactly; the message names it."""


class BatchEncoder(Protocol):
    note: str  # one line: which encoder, and why when not tiktoken

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...


def byte_alphabet() -> dict[str, int]:
    """The byte-level alphabet: the printable character standing for each byte (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    others = [b for b in range(256) if b not in printable]
    chars = {chr(b): b for b in printable}
    chars.update({chr(256 + n): b for n, b in enumerate(others)})
    return chars


class HFEncoder:
    """The reference: the `tokenizers` library's encode_batch_fast (no offsets)."""

    def __init__(self, backend: Tokenizer, note: str) -> None:
        self.backend = backend
        self.note = note

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]


def _pattern(pre_tokenizer: dict | None) -> str:
    """The tiktoken split regex equal to the pre-tokeniser, or NotExact."""
    spec = pre_tokenizer or {}
    kind = spec.get("type")
    if kind == "ByteLevel":
        if spec.get("add_prefix_space") or not spec.get("use_regex", True):
            raise NotExact("pre-tokenizer ByteLevel with add_prefix_space or without its regex")
        return GPT2_PATTERN
    steps = spec.get("pretokenizers", []) if kind == "Sequence" else []
    if len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel":
        split, level = steps
        pattern = split.get("pattern", {})
        if (
            "Regex" in pattern
            and split.get("behavior") == "Isolated"
            and not split.get("invert")
            and not level.get("add_prefix_space")
            and not level.get("use_regex", True)
        ):
            return pattern["Regex"]
    raise NotExact(f"pre-tokenizer {json.dumps(pre_tokenizer)[:120]}")


def _check_model(model: dict) -> None:
    if model.get("type") != "BPE":
        raise NotExact(f"model {model.get('type')} (tiktoken is byte-level BPE)")
    for key in ("dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise NotExact(f"BPE {key}={model[key]!r}")
    if model.get("byte_fallback"):
        raise NotExact("BPE byte_fallback")


def _ranks(model: dict, added: set[str]) -> dict[bytes, int]:
    """Byte string -> id of every single-byte token and merge result, checked to be merge ranks."""
    alphabet, vocab = byte_alphabet(), model["vocab"]
    missing = [c for c in alphabet if c not in vocab]
    if missing:
        raise NotExact(f"{len(missing)} of the 256 byte tokens missing from the vocabulary")
    ranks = {bytes([alphabet[c]]): vocab[c] for c in alphabet}
    previous = -1
    for merge in model["merges"]:
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        token_id = vocab.get(left + right)
        if token_id is None or token_id < previous:
            raise NotExact(
                f"merge {left!r} + {right!r}: its result's id is not in merge order "
                "(tiktoken ranks tokens by id)"
            )
        previous = token_id
        ranks[bytes(alphabet[c] for c in left + right)] = token_id
    if model.get("ignore_merges"):
        ranked = set(ranks.values())
        extra = [t for t, i in vocab.items() if i not in ranked and t not in added]
        if extra:
            raise NotExact(f"ignore_merges with {len(extra)} tokens no merge makes ({extra[0]!r})")
    return ranks


def _check_whole_tokens(backend: Tokenizer, ranks: dict[bytes, int]) -> None:
    """Without ignore_merges, BPE of a token's own bytes must give that token (tiktoken's
    shortcut for a pre-token in the vocabulary)."""
    alphabet = {b: c for c, b in byte_alphabet().items()}
    for token, token_id in ranks.items():
        pieces = backend.model.tokenize("".join(alphabet[b] for b in token))
        if len(pieces) != 1:
            raise NotExact(f"token {token_id}: BPE of its own bytes gives {len(pieces)} tokens")


def _specials(added_tokens: list[dict]) -> dict[str, int]:
    specials = {}
    for token in added_tokens:
        flags = [k for k in ("single_word", "lstrip", "rstrip", "normalized") if token.get(k)]
        if flags:
            raise NotExact(f"added token {token['content']!r} with {', '.join(flags)}")
        specials[token["content"]] = token["id"]
    for a in specials:
        for b in specials:
            if a != b and b.startswith(a):
                raise NotExact(f"added token {a!r} is a prefix of {b!r}")
    return specials


class TiktokenEncoder:
    """tiktoken's BPE over the tokenizer's ranks: the same ids as HFEncoder, several times faster."""

    note = "encoder: tiktoken (the tokenizers library's ids, checked when built)"

    def __init__(
        self, encoding: Any, backend: Tokenizer, specials: dict[str, int], threads: int
    ) -> None:
        self.encoding = encoding
        self.normalizer = backend.normalizer
        self.specials = specials
        # Longest first: Hugging Face matches added tokens leftmost-longest.
        ordered = sorted(specials, key=len, reverse=True)
        self.special_re = re.compile("|".join(map(re.escape, ordered))) if specials else None
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None

    @classmethod
    def build(cls, backend: Tokenizer, threads: int = 1) -> TiktokenEncoder:
        """The encoder for `backend`, or NotExact naming what tiktoken cannot reproduce."""
        import tiktoken

        spec = json.loads(backend.to_str())
        if spec.get("truncation") or spec.get("padding"):
            raise NotExact("truncation or padding set in tokenizer.json")
        normalizer = (spec.get("normalizer") or {}).get("type")
        if normalizer not in (None, "NFC"):
            raise NotExact(f"normalizer {normalizer}")
        pattern = _pattern(spec.get("pre_tokenizer"))
        model = spec["model"]
        _check_model(model)
        specials = _specials(spec.get("added_tokens", []))
        ranks = _ranks(model, set(specials))
        if not model.get("ignore_merges"):
            _check_whole_tokens(backend, ranks)
        encoding = tiktoken.Encoding(
            "chatbaker", pat_str=pattern, mergeable_ranks=ranks, special_tokens={}
        )
        return cls(encoding, backend, specials, threads)

    def _prepare(self, piece: str) -> str:
        """What the Hugging Face pipeline hands its pre-tokeniser: `piece` normalised."""
        if piece.isascii():
            return piece
        surrogate = lone_surrogate(piece)
        if surrogate:
            raise ValueError(f"{surrogate}: not valid Unicode text")
        return self.normalizer.normalize_str(piece) if self.normalizer else piece

    def _parts(self, text: str) -> list[str | int]:
        """`text` as ordinary pieces (str) and added-token ids (int), in order."""
        if self.special_re is None or not self.special_re.search(text):
            return [text]
        parts: list[str | int] = []
        start = 0
        for match in self.special_re.finditer(text):
            if match.start() > start:
                parts.append(text[start : match.start()])
            parts.append(self.specials[match.group()])
            start = match.end()
        if start < len(text):
            parts.append(text[start:])
        return parts

    def _encode_pieces(self, pieces: list[str]) -> list[list[int]]:
        """tiktoken over every piece; with threads, one contiguous share per thread (tiktoken
        releases the GIL while it encodes)."""
        encode = self.encoding.encode_ordinary
        if self.pool is None or len(pieces) < 2 * self.threads:
            return [encode(piece) for piece in pieces]
        step = -(-len(pieces) // self.threads)
        shares = [pieces[i : i + step] for i in range(0, len(pieces), step)]
        done = self.pool.map(lambda share: [encode(piece) for piece in share], shares)
        return [ids for share in done for ids in share]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        layouts = [self._parts(text) for text in texts]
        pieces = [self._prepare(p) for parts in layouts for p in parts if isinstance(p, str)]
        encoded = iter(self._encode_pieces(pieces))
        results = []
        for parts in layouts:
            if len(parts) == 1 and isinstance(parts[0], str):
                results.append(next(encoded))
                continue
            ids: list[int] = []
            for part in parts:
                if isinstance(part, int):
                    ids.append(part)
                else:
                    ids += next(encoded)
            results.append(ids)
        return results


def batch_encoder(backend: Tokenizer, choice: str = "auto", threads: int = 1) -> BatchEncoder:
    """The encoder `choice` names: `tiktoken` (NotExact if it cannot be exact), `hf`, or `auto`
    (tiktoken where exact, else hf); its `note` says which in one line, and why not tiktoken."""
    if choice not in ENCODERS:
        raise ValueError(f"encoder={choice!r}: expected one of {', '.join(ENCODERS)}")
    if choice == "hf":
        return HFEncoder(backend, "encoder: hf (the tokenizers library), as asked")
    try:
        return TiktokenEncoder.build(backend, threads)
    except NotExact as why:
        if choice == "tiktoken":
            raise NotExact(
                f"encoder tiktoken cannot reproduce this tokenizer exactly ({why}); "
                "use encoder auto or hf"
            ) from None
        return HFEncoder(backend, f"encoder: hf (the tokenizers library); tiktoken: {why}")
