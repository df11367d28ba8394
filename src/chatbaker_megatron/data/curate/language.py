"""Language routing KO / EN / other by script: the share of letters that are Hangul or Latin.

Offline and model-free (no LID download): a document's letters are counted
by script, and the per-language thresholds of `curate.language` decide. A
Korean text quoting English terms stays Korean; Japanese, Chinese, Cyrillic
or Greek text, and mixes in which neither script reaches its threshold, are
`other`. The scores go into the document's metadata (`hangul_ratio`,
`latin_ratio`) and the chosen code into `language`, which the quality
filters and the per-language output shards read.
"""

from __future__ import annotations

from dataclasses import dataclass

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

KO, EN, OTHER = "ko", "en", "other"
LANGUAGES = (KO, EN, OTHER)


def _is_hangul(ch: str) -> bool:
    code = ord(ch)
    # Syllables, Jamo, compatibility Jamo, Jamo extended A and B.
    return (
        0xAC00 <= code <= 0xD7A3
        or 0x1100 <= code <= 0x11FF
        or 0x3130 <= code <= 0x318F
        or 0xA960 <= code <= 0xA97F
        or 0xD7B0 <= code <= 0xD7FF
    )


def _is_latin(ch: str) -> bool:
    # Basic Latin letters plus Latin-1 and Latin Extended-A/B letters (é, ß, ł, ...).
    return ch.isascii() or 0x00C0 <= ord(ch) <= 0x024F


@dataclass(frozen=True)
class ScriptScores:
    letters: int
    hangul: float
    latin: float


def script_scores(text: str) -> ScriptScores:
    """Shares of the letters (str.isalpha) of `text` that are Hangul and Latin."""
    letters = hangul = latin = 0
    for ch in text:
        if not ch.isalpha():
            continue
        letters += 1
        if _is_hangul(ch):
            hangul += 1
        elif _is_latin(ch):
            latin += 1
    if not letters:
        return ScriptScores(0, 0.0, 0.0)
    return ScriptScores(letters, hangul / letters, latin / letters)


def route(scores: ScriptScores, ko_min_hangul: float, en_min_latin: float) -> str:
    """KO when Hangul reaches its threshold (checked first: Korean text quotes English),
    EN when Latin does, else other."""
    if scores.letters and scores.hangul >= ko_min_hangul:
        return KO
    if scores.letters and scores.latin >= en_min_latin:
        return EN
    return OTHER


class LanguageRouter(BaseFilter):
    """Sets `metadata["language"]`; drops `other` documents unless they are kept."""

    name = "🗺 Language routing"

    def __init__(self, ko_min_hangul: float, en_min_latin: float, keep_other: bool) -> None:
        super().__init__()
        self.ko_min_hangul = ko_min_hangul
        self.en_min_latin = en_min_latin
        self.keep_other = keep_other

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        scores = script_scores(doc.text)
        language = route(scores, self.ko_min_hangul, self.en_min_latin)
        doc.metadata["language"] = language
        doc.metadata["hangul_ratio"] = round(scores.hangul, 4)
        doc.metadata["latin_ratio"] = round(scores.latin, 4)
        self.stat_update(f"routed_{language}")
        if language == OTHER and not self.keep_other:
            return False, "language_other"
        return True
