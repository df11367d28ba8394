"""Which script a text is written in: the share of its letters that are Hangul or Latin.

The measure `chatbaker curate` routes documents by (data/curate/language.py)
and `chatbaker eval-chat` checks an answer's language with. Pure Python, no
model, no datatrove.
"""

from __future__ import annotations

from dataclasses import dataclass

KO, EN, OTHER = "ko", "en", "other"


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
