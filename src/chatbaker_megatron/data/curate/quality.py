"""Quality rules per language: datatrove's Gopher filters counting eojeol, plus what they lack.

Gopher quality (length, mean word length, `#`/ellipsis-to-word ratios,
bullet and ellipsis lines, alphabetic words, stop words) and Gopher
repetition (duplicate lines/paragraphs, top and duplicated n-grams) are
datatrove's, given our `EojeolTokenizer` so that a Korean word is an eojeol.
Each runs once per language with that language's thresholds
(`curate.quality.ko` / `.en`); documents of other languages pass through.
Added here: digit and symbol character ratios (Gopher has only `#` and
`...`), the Korean particle rule (Gopher's stop words, which for Korean
are bound particles, not words), and line-level boilerplate removal for
Korean and English web phrases. C4's filter is not used: it strips every
line and removes `[0]`-like "citations", which breaks code in documents.
"""

from __future__ import annotations

import re
from typing import Any

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.filters.c4_filters import POLICY_SUBSTRINGS
from datatrove.pipeline.filters.gopher_quality_filter import GopherQualityFilter
from datatrove.pipeline.filters.gopher_repetition_filter import GopherRepetitionFilter
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.utils.text import split_into_words

from chatbaker_megatron.data.curate.language import KO
from chatbaker_megatron.data.curate.words import EojeolTokenizer

# Lines that are site furniture, not content (matched case-insensitively, as substrings).
BOILERPLATE_PHRASES = (
    *POLICY_SUBSTRINGS,
    "all rights reserved",
    "subscribe to our newsletter",
    "click here to",
    "무단 전재",
    "무단전재",
    "재배포 금지",
    "개인정보처리방침",
    "개인정보 처리방침",
    "이용약관",
    "쿠키를 사용",
    "로그인 | 회원가입",
    "로그인 / 회원가입",
    "기사제보",
    "구독하기",
    "공유하기",
    "관련기사 더보기",
    "ⓒ",
)
_HANGUL_WORD = re.compile(r"[\uac00-\ud7a3]+")
# The most frequent particles and endings an eojeol of running text ends with.
_PARTICLE_ENDING = re.compile(
    r"(?:은|는|이|가|을|를|의|에|에서|에게|께|로|으로|와|과|도|만|까지|부터|다|고|며|서|면|"
    r"한|된|하는|있는|없는|되는|할|될|하여|하고|하며|및|등|라|요|죠|니다)$"
)


class LanguageGated(BaseFilter):
    """Mixin for a filter: apply it to documents of one language only; the others pass."""

    name: str

    def __init__(self, language_code: str, **kwargs: Any) -> None:
        # Before PipelineStep.__init__, which names the stats after the step: the
        # class's name, as the instance has none yet.
        self.name = f"{self.name} [{language_code}]"
        self.language_code = language_code
        super().__init__(**kwargs)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if doc.metadata.get("language") != self.language_code:
            return True
        return super().filter(doc)


class GatedGopherQuality(LanguageGated, GopherQualityFilter):
    name = "🥇 Gopher quality"


class RepetitionFilter(GopherRepetitionFilter):
    """Gopher repetition, with the n-gram rules only from `ngram_min_words` words up.

    datatrove scores the most frequent n-gram even when it occurs once, so
    every short document fails "top 2-gram > 20% of characters" (one 2-gram
    of a ten-word article is that much); Gopher only ever saw documents of
    50+ words. Line and paragraph duplication rules apply to all.
    """

    # (n, largest share of characters) rules, set by GopherRepetitionFilter.__init__.
    top_n_grams: tuple[tuple[int, float], ...]
    dup_n_grams: tuple[tuple[int, float], ...]

    def __init__(self, ngram_min_words: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ngram_min_words = ngram_min_words
        self.ngram_rules = (self.top_n_grams, self.dup_n_grams)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        short = len(split_into_words(doc.text, self.language)) < self.ngram_min_words
        self.top_n_grams, self.dup_n_grams = ((), ()) if short else self.ngram_rules
        return super().filter(doc)


class GatedGopherRepetition(LanguageGated, RepetitionFilter):
    name = "👯 Gopher repetition"


class CharRatioFilter(BaseFilter):
    """Digits and symbols (neither letter, digit nor space) as shares of non-space characters."""

    name = "🔣 Digit/symbol ratio"

    def __init__(self, max_digit_ratio: float | None, max_symbol_ratio: float | None) -> None:
        super().__init__()
        self.max_digit_ratio = max_digit_ratio
        self.max_symbol_ratio = max_symbol_ratio

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        chars = [c for c in doc.text if not c.isspace()]
        if not chars:
            return False, "empty"
        digits = sum(c.isdigit() for c in chars) / len(chars)
        if self.max_digit_ratio is not None and digits > self.max_digit_ratio:
            return False, "too_many_digits"
        symbols = sum(not c.isalnum() for c in chars) / len(chars)
        if self.max_symbol_ratio is not None and symbols > self.max_symbol_ratio:
            return False, "too_many_symbols"
        return True


class GatedCharRatio(LanguageGated, CharRatioFilter):
    name = CharRatioFilter.name


class KoreanParticleFilter(BaseFilter):
    """Korean prose: enough Hangul eojeol end in a particle or verb ending.

    Gopher's stop-word rule for Korean. Keyword lists, menus and tag spam
    are runs of bare nouns; sentences attach 은/는/이/가/을/를/의/에/다/...
    Applied from `min_words` Hangul eojeol up (headings are bare nouns too).
    """

    name = "🇰🇷 Korean particles"

    def __init__(self, min_ratio: float, min_words: int) -> None:
        super().__init__()
        self.min_ratio = min_ratio
        self.min_words = min_words

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if doc.metadata.get("language") != KO:
            return True
        words = _HANGUL_WORD.findall(doc.text)
        if len(words) < self.min_words:
            return True
        ratio = sum(bool(_PARTICLE_ENDING.search(w)) for w in words) / len(words)
        if ratio < self.min_ratio:
            return False, "ko_few_particles"
        return True


class BoilerplateLines(BaseFormatter):
    """Removes lines holding a boilerplate phrase (cookie/policy/copyright/sharing furniture)."""

    name = "🧹 Boilerplate lines"

    def __init__(self, phrases: tuple[str, ...] = BOILERPLATE_PHRASES) -> None:
        super().__init__()
        self.phrases = tuple(p.lower() for p in phrases)

    def format(self, text: str) -> str:
        kept = []
        for line in text.split("\n"):
            lowered = line.lower()
            if any(p in lowered for p in self.phrases):
                self.stat_update("lines_removed")
                self.stat_update("chars_removed", value=len(line))
            else:
                kept.append(line)
        return "\n".join(kept).strip()


def gopher_filters(language_code: str, thresholds: Any) -> list[BaseFilter]:
    """Gopher quality + repetition for one language, counting eojeol/regex words."""
    words = EojeolTokenizer()
    return [
        GatedGopherQuality(
            language_code,
            min_doc_words=thresholds.min_words,
            max_doc_words=thresholds.max_words,
            min_avg_word_length=thresholds.min_mean_word_length,
            max_avg_word_length=thresholds.max_mean_word_length,
            max_symbol_word_ratio=thresholds.max_symbol_word_ratio,
            max_bullet_lines_ratio=thresholds.max_bullet_lines_ratio,
            max_ellipsis_lines_ratio=thresholds.max_ellipsis_lines_ratio,
            max_non_alpha_words_ratio=thresholds.min_alpha_words_ratio,
            min_stop_words=thresholds.min_stop_words or None,
            stop_words=list(thresholds.stop_words),
            language=words,
        ),
        GatedGopherRepetition(
            language_code,
            dup_line_frac=thresholds.max_dup_line_frac,
            dup_para_frac=thresholds.max_dup_para_frac,
            dup_line_char_frac=thresholds.max_dup_line_char_frac,
            dup_para_char_frac=thresholds.max_dup_para_char_frac,
            top_n_grams=tuple(zip((2, 3, 4), thresholds.max_top_ngram_char_frac)),
            dup_n_grams=tuple(zip(range(5, 11), thresholds.max_dup_ngram_char_frac)),
            ngram_min_words=thresholds.ngram_rules_min_words,
            language=words,
        ),
        GatedCharRatio(
            language_code,
            max_digit_ratio=thresholds.max_digit_ratio,
            max_symbol_ratio=thresholds.max_symbol_ratio,
        ),
    ]
