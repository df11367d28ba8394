"""Which language a question or an answer is in, by the measure `chatbaker curate` routes with.

The share of letters that are Hangul or Latin (data/scripts.py) with
curate's thresholds; code (fenced blocks and `inline` spans) is left out
first, since a Korean answer to a coding question is mostly Latin code.
"""

from __future__ import annotations

import re

from chatbaker_megatron.config.eval_chat import LanguageCheckConfig
from chatbaker_megatron.data.scripts import EN, KO, route, script_scores

_CODE = re.compile(r"```.*?(```|$)|`[^`\n]*`", re.DOTALL)


def strip_code(text: str) -> str:
    """`text` without fenced code blocks (closed or not) and inline code spans."""
    return _CODE.sub(" ", text)


def text_language(text: str, check: LanguageCheckConfig) -> str | None:
    """ko, en or other; None for a text without letters outside code (a bare number)."""
    scores = script_scores(strip_code(text))
    if not scores.letters:
        return None
    return route(scores, check.ko_min_hangul, check.en_min_latin)


def is_mismatch(question_language: str, answer: str, check: LanguageCheckConfig) -> bool:
    """True when a ko or en question got an answer in another language.

    Answers without letters (a number, only code) and questions in neither
    language are never mismatches.
    """
    if not check.enabled or question_language not in (KO, EN):
        return False
    language = text_language(answer, check)
    return language is not None and language != question_language
