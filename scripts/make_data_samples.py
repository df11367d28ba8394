"""Regenerate the bundled pretraining samples from KoNLPy's corpus and CPython's pydoc_data.

    .venv/bin/python scripts/make_data_samples.py

writes src/chatbaker_megatron/data/demo/samples/pretrain_{ko,en}.jsonl (one
{"text", "source"} object per line). Needs konlpy (a dev dependency);
nothing at run time does. The English text follows the running Python's
documentation, so regenerating under another Python version changes it.
The SFT conversations (sft_conversations.json) are hand-written, not generated.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from pydoc_data.topics import topics

import konlpy

SAMPLES = Path(__file__).resolve().parents[1] / "src/chatbaker_megatron/data/demo/samples"
CORPUS = Path(konlpy.__file__).parent / "data/corpus"
# Topics longer than this are split at their section headings, so that the
# train/valid/test split has enough documents to cut between.
LONG_TOPIC = 8000


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def constitution_articles() -> list[tuple[str, str]]:
    """The preamble, every article (with its chapter heading) and the supplementary provisions."""
    text = (CORPUS / "kolaw/constitution.txt").read_text(encoding="utf-8")
    text = re.sub(r"펼침\s+(부칙 <[^>]*>)\s+부칙보기", r"\1", text)
    main, _, supplement = text.partition("부칙 <")
    docs, current = [], []
    for line in main.splitlines():
        starts_article = re.match(r"\s*제\d+조", line)
        starts_chapter = re.match(r"\s*제\d+장", line)
        # A new article or chapter closes the document so far, unless that
        # is only a chapter heading (which then opens the next article).
        opens = (starts_article or starts_chapter) and current
        if opens and not _only_headings(current):
            docs.append("\n".join(current))
            current = []
        current.append(line.strip())
    docs.append("\n".join(current))
    docs.append("부칙 <" + supplement)
    return [(_tidy(doc), "konlpy/kolaw/constitution.txt") for doc in docs if doc.strip()]


def _only_headings(lines: list[str]) -> bool:
    return all(re.match(r"제\d+장", line) or not line for line in lines)


def bills() -> list[tuple[str, str]]:
    return [
        (_tidy(path.read_text(encoding="utf-8")), f"konlpy/kobill/{path.name}")
        for path in sorted((CORPUS / "kobill").glob("*.txt"))
    ]


def pydoc_sections() -> list[tuple[str, str]]:
    docs = []
    for name, text in sorted(topics.items()):
        parts = [text]
        if len(text) > LONG_TOPIC:
            # A section heading is a line underlined with '=' of the same length.
            parts = re.split(r"\n(?=[^\n]+\n=+\n)", text)
        docs += [(_tidy(part), f"pydoc_data.topics:{name}") for part in parts if part.strip()]
    return docs


def write(path: Path, docs: list[tuple[str, str]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for text, source in docs:
            f.write(json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n")
    print(f"{path}: {len(docs)} documents, {sum(len(t) for t, _ in docs):,} characters")


if __name__ == "__main__":
    write(SAMPLES / "pretrain_ko.jsonl", constitution_articles() + bills())
    write(SAMPLES / "pretrain_en.jsonl", pydoc_sections())
