"""Words as the quality rules count them: eojeol for Korean, space-separated words elsewhere.

Gopher's and C4's rules count words, and datatrove asks a `WordTokenizer`
for them (its default for English is spaCy, for Korean Kiwi). Here a word is
a run of letters/digits (`\\w+`) and a run of punctuation is its own token,
which datatrove's filters then recognise as a symbol "word": for Korean
that is the eojeol (어절, the space-separated unit: stem plus particles or
endings), the unit Korean spacing rules and readers use. Why not Kiwi's
morphemes: docs/curate.md (Korean thresholds).
"""

from __future__ import annotations

import re

from datatrove.utils.text import TERMINAL_PUNCTUATION
from datatrove.utils.word_tokenizers import WordTokenizer, simple_span_tokenize

_WORD = re.compile(r"\w+|[^\w\s]+")
# A sentence ends at terminal punctuation (Korean uses the same marks) or a newline.
_SENTENCE = re.compile(
    rf"[^{re.escape(''.join(TERMINAL_PUNCTUATION))}\n]*(?:[{re.escape(''.join(TERMINAL_PUNCTUATION))}]+|\n|$)"
)


class EojeolTokenizer(WordTokenizer):
    """Regex words (eojeol for Hangul) and sentences; no model, the same for every language."""

    def word_tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return list(simple_span_tokenize(text, self.sent_tokenize(text)))

    # One instance per process is enough; equal instances share datatrove's
    # split_into_words cache after being pickled into worker processes.
    def __eq__(self, other: object) -> bool:
        return type(other) is EojeolTokenizer

    def __hash__(self) -> int:
        return hash(EojeolTokenizer)
