"""Language routing KO / EN / other by script: the share of letters that are Hangul or Latin.

Offline and model-free (no LID download): a document's letters are counted
by script (data/scripts.py, shared with `chatbaker eval-chat`'s answer-language
check), and the per-language thresholds of `curate.language` decide. A
Korean text quoting English terms stays Korean; Japanese, Chinese, Cyrillic
or Greek text, and mixes in which neither script reaches its threshold, are
`other`. The scores go into the document's metadata (`hangul_ratio`,
`latin_ratio`) and the chosen code into `language`, which the quality
filters and the per-language output shards read.
"""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from chatbaker_megatron.data.scripts import KO, OTHER, route, script_scores

__all__ = ["KO", "OTHER", "LanguageRouter"]


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
