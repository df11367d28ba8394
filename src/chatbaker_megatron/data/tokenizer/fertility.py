"""Tokenizer fertility: tokens per character and per word, by language (Korean/English)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tokenizers import Tokenizer

LANGUAGES = ("ko", "en")


def _is_hangul(ch: str) -> bool:
    # Syllables, jamo and compatibility jamo.
    code = ord(ch)
    return 0xAC00 <= code <= 0xD7A3 or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F


def language_of(text: str) -> str | None:
    """'ko' when Hangul letters outnumber ASCII letters, 'en' for the converse, None without letters."""
    hangul = sum(1 for ch in text if _is_hangul(ch))
    latin = sum(1 for ch in text if ch.isascii() and ch.isalpha())
    if hangul == latin == 0:
        return None
    return "ko" if hangul > latin else "en"


@dataclass
class Fertility:
    docs: int = 0
    chars: int = 0
    words: int = 0
    tokens: int = 0

    @property
    def tokens_per_char(self) -> float:
        return self.tokens / self.chars if self.chars else float("nan")

    @property
    def tokens_per_word(self) -> float:
        return self.tokens / self.words if self.words else float("nan")


def measure_fertility(tokenizer: Tokenizer, texts: Iterable[str]) -> dict[str, Fertility]:
    """Fertility per language over `texts` (words are whitespace-separated; no special tokens added)."""
    stats = {lang: Fertility() for lang in LANGUAGES}
    by_lang: dict[str, list[str]] = {lang: [] for lang in LANGUAGES}
    for text in texts:
        lang = language_of(text)
        if lang is not None:
            by_lang[lang].append(text)
    for lang, docs in by_lang.items():
        for text, encoding in zip(docs, tokenizer.encode_batch(docs, add_special_tokens=False)):
            entry = stats[lang]
            entry.docs += 1
            entry.chars += len(text)
            entry.words += len(text.split())
            entry.tokens += len(encoding.ids)
    return stats


def format_fertility(stats: dict[str, Fertility]) -> str:
    """A small table, one line per language; 'n/a' for a language without held-out text."""
    lines = ["lang   docs      chars      words     tokens  tok/char  tok/word"]
    for lang, s in stats.items():
        if not s.docs:
            lines.append(f"{lang:<4} {'n/a (no held-out documents)':>30}")
            continue
        lines.append(
            f"{lang:<4} {s.docs:>6} {s.chars:>10,} {s.words:>10,} {s.tokens:>10,}"
            f"  {s.tokens_per_char:>8.3f}  {s.tokens_per_word:>8.3f}"
        )
    return "\n".join(lines)
