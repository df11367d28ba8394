"""Questions in FastChat's question.jsonl format: the bundled Korean and English sets, or a file.

One JSON object per line: `question_id` (int or string, unique), `category`,
`turns` (the user's messages, one per turn) and optionally `reference` (one
reference answer per turn, used for grading math, reasoning and coding and
by the chrF metric). The question's language (ko, en or other) is measured
on its turns (language.py).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from chatbaker_megatron.config.eval_chat import LanguageCheckConfig, QuestionsConfig
from chatbaker_megatron.eval_chat.language import text_language

CATEGORIES = (
    "writing",
    "roleplay",
    "reasoning",
    "math",
    "coding",
    "extraction",
    "stem",
    "humanities",
)
# Categories graded against the reference answer when the question has one.
REFERENCE_CATEGORIES = ("math", "reasoning", "coding")


class QuestionFileError(ValueError):
    """A question file that does not follow the format; the message names file, line and field."""


@dataclass(frozen=True)
class Question:
    question_id: int | str
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] | None
    language: str
    source: str

    @property
    def key(self) -> str:
        """The id as the answer and judgment files key it."""
        return str(self.question_id)

    def reference_for(self, turn: int) -> str | None:
        """The reference answer of turn `turn` (1-based), if any."""
        if self.reference is None or turn > len(self.reference):
            return None
        return self.reference[turn - 1] or None

    def graded_with_reference(self, turn: int) -> bool:
        return self.category in REFERENCE_CATEGORIES and self.reference_for(turn) is not None


def bundled_file(language: str) -> Path:
    """The bundled question file of `language` (ko or en)."""
    return Path(str(resources.files("chatbaker_megatron.eval_chat") / "questions")) / (
        f"{language}.jsonl"
    )


def _strings(where: str, field: str, value: object) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(item, str) and item.strip() for item in value)
    ):
        raise QuestionFileError(f"{where}: {field} must be a non-empty list of non-empty strings")
    return tuple(value)


def _question(where: str, record: object, check: LanguageCheckConfig, source: str) -> Question:
    if not isinstance(record, dict):
        raise QuestionFileError(f"{where}: expected a JSON object")
    for field in ("question_id", "category", "turns"):
        if field not in record:
            raise QuestionFileError(f"{where}: missing field {field!r}")
    qid = record["question_id"]
    if isinstance(qid, bool) or not isinstance(qid, int | str) or qid == "":
        raise QuestionFileError(f"{where}: question_id={qid!r} must be an integer or a string")
    category = record["category"]
    if not isinstance(category, str) or not category:
        raise QuestionFileError(f"{where}: category={category!r} must be a non-empty string")
    turns = _strings(where, "turns", record["turns"])
    reference = None
    if record.get("reference") is not None:
        value = record["reference"]
        if (
            not isinstance(value, list)
            or len(value) > len(turns)
            or not all(isinstance(item, str) for item in value)
        ):
            raise QuestionFileError(
                f"{where}: reference must be a list of at most {len(turns)} strings (one per turn)"
            )
        reference = tuple(value)
    language = text_language(" ".join(turns), check) or "other"
    return Question(qid, category, turns, reference, language, source)


def read_question_file(path: Path, check: LanguageCheckConfig) -> list[Question]:
    """The questions of one file, in file order; QuestionFileError for bad lines or duplicate ids."""
    if not path.is_file():
        raise FileNotFoundError(f"question file {path} not found")
    questions: list[Question] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise QuestionFileError(f"{where}: invalid JSON ({err.msg})") from None
            questions.append(_question(where, record, check, str(path)))
    if not questions:
        raise QuestionFileError(f"{path}: no questions")
    return questions


def load_questions(cfg: QuestionsConfig, check: LanguageCheckConfig) -> list[Question]:
    """The bundled sets and files `cfg` names, filtered by category and per-category limit."""
    paths = [bundled_file(language) for language in cfg.bundled] + [Path(p) for p in cfg.files]
    questions = [q for path in paths for q in read_question_file(path, check)]
    seen: dict[str, str] = {}
    for q in questions:
        if q.key in seen:
            raise QuestionFileError(
                f"question_id {q.question_id!r} appears in {seen[q.key]} and {q.source}: "
                "ids must be unique across the question files"
            )
        seen[q.key] = q.source
    if cfg.categories:
        unknown = sorted(set(cfg.categories) - {q.category for q in questions})
        if unknown:
            raise QuestionFileError(f"questions.categories: no questions of {', '.join(unknown)}")
        questions = [q for q in questions if q.category in cfg.categories]
    if cfg.per_category is not None:
        taken: Counter[tuple[str, str]] = Counter()
        kept = []
        for q in questions:
            taken[(q.language, q.category)] += 1
            if taken[(q.language, q.category)] <= cfg.per_category:
                kept.append(q)
        questions = kept
    return questions
