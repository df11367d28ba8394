"""Unicode NFC, whitespace and control characters: the same text for the same content.

NFC first, because Korean arrives both precomposed (가) and as conjoining
Jamo (ᄀ + ᅡ, from macOS file names and some crawlers): without it the same
word has two spellings for the filters, dedup and the tokenizer. Then every
Unicode space (NBSP, ideographic space, ...) becomes " ", control and
invisible format characters go (zero-width space, BOM, soft hyphen; tab and
newline stay), line ends become "\\n", trailing spaces and runs of more than
one blank line go. Spaces inside a line are kept: code keeps its
indentation.
"""

from __future__ import annotations

import re
import unicodedata

from datatrove.pipeline.formatters.base import BaseFormatter

# Zs: every space separator but " " itself; Cc/Cf control and format characters,
# except \t and \n and the joiners that some scripts need (ZWNJ, ZWJ).
_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_KEEP = {"\t", "\n", "\u200c", "\u200d"}


def _char_class(codes: list[int]) -> str:
    """A regex character class of these code points, as ranges (a long list of single
    characters makes `re` slow)."""
    ranges: list[list[int]] = []
    for code in codes:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    return (
        "["
        + "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in ranges)
        + "]"
    )


_CONTROL = re.compile(
    _char_class(
        [
            c
            for c in range(0x110000)
            if unicodedata.category(chr(c)) in ("Cc", "Cf") and chr(c) not in _KEEP
        ]
    )
)
_TRAILING = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANK_RUNS = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", _SPACES.sub(" ", text))
    return _BLANK_RUNS.sub("\n\n", _TRAILING.sub("", text)).strip()


class TextNormalizer(BaseFormatter):
    name = "🧽 Normalise (NFC, spaces, controls)"

    def format(self, text: str) -> str:
        normalized = normalize_text(text)
        if normalized != text:
            self.stat_update("changed")
        return normalized
